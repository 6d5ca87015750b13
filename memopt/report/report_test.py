"""The report's pieces on data constructed here: the Pareto front, time to target, the plots fed by plain
numbers (seeds, an lr sweep), the tables and the HTML page."""
from __future__ import annotations

import base64
from html.parser import HTMLParser

import matplotlib.pyplot as plt
import pytest

from memopt.report import html
from memopt.report.analysis import first_reaching, pareto_front, to_target
from memopt.report.gather import Comparison, MethodResult
from memopt.report.plots import lr_sensitivity_figure, pareto_figure
from memopt.report.tables import Cell, Table, epoch_time, shows_accuracy, summary


def result(method: str, val: list[tuple[int, float]], seconds_per_step: float, **kw) -> MethodResult:
    steps = range(1, max(s for s, _ in val) + 1)
    return MethodResult(method, "FINISHED", "", tokens_per_step=100, val_curve=val,
                        seconds_at={s: s * seconds_per_step for s in steps}, **kw)


def comparison(*results: MethodResult) -> Comparison:
    return Comparison("parent", "1", "sqlite:///x.db", 0, {}, {}, list(results))


def test_pareto_front_keeps_only_the_undominated_by_memory():
    points = {"adamw": (100, 3.0), "galore": (80, 3.1), "blockllm": (60, 3.4), "worse": (90, 3.5), "tie": (100, 3.2)}
    assert pareto_front(points) == ["blockllm", "galore", "adamw"]
    assert pareto_front({}) == []


def test_time_to_target_counts_tokens_and_seconds_against_adamw():
    adamw = result("adamw", [(0, 5.0), (10, 4.0), (20, 3.0)], seconds_per_step=1.0)
    fast = result("galore", [(0, 5.0), (10, 2.9), (20, 2.5)], seconds_per_step=2.0)
    never = result("blockllm", [(0, 5.0), (10, 4.5), (20, 3.5)], seconds_per_step=0.5)
    target, rows = to_target(comparison(adamw, fast, never))
    assert target == 3.0
    by = {r.method: r for r in rows}
    assert (by["adamw"].reached.step, by["adamw"].tokens_speedup, by["adamw"].time_speedup) == (20, 1.0, 1.0)
    assert (by["galore"].reached.step, by["galore"].reached.tokens, by["galore"].reached.seconds) == (10, 1000, 20.0)
    assert by["galore"].tokens_speedup == 2.0 and by["galore"].time_speedup == 1.0
    assert by["blockllm"].reached is None and by["blockllm"].tokens_speedup is None
    assert first_reaching(adamw, 10.0).step == 10, "step 0 (the untrained model) never counts"
    assert to_target(comparison(fast)) == (None, []), "no AdamW, no target"


def test_epoch_time_is_measured_or_says_it_is_an_estimate():
    measured = MethodResult("a", "FINISHED", "", epoch_time_s=12.0, epoch_time_measured=True)
    estimated = MethodResult("b", "FINISHED", "", epoch_time_s=64.0, epoch_time_measured=False)
    assert epoch_time(measured) == Cell("12.0", 12.0)
    assert epoch_time(estimated) == Cell("≈64.0 (estimate)", 64.0)


def test_accuracy_has_a_column_only_when_some_method_answers():
    zero = [MethodResult(m, "FINISHED", "", accuracy=0.0) for m in ("adamw", "galore")]
    assert not shows_accuracy(zero) and "Answer Accuracy" not in summary(zero).header
    some = [*zero, MethodResult("blockllm", "FINISHED", "", accuracy=0.25)]
    table = summary(some)
    assert "Answer Accuracy" in table.header
    assert table.rows[2][table.header.index("Answer Accuracy")].text == "25.00%"
    lr = summary([MethodResult("adamw", "FINISHED", "", lr=0.001)])
    assert lr.rows[0][lr.header.index("LR")] == Cell("0.001", 0.001)


def test_pareto_plot_draws_seed_spread_as_error_bars_and_the_front():
    points = {"adamw": (100.0, 3.0), "galore": (80.0, 3.2), "blockllm": (90.0, 3.5)}
    fig = pareto_figure(points, spread={"adamw": [2.9, 3.0, 3.1], "galore": [3.2]},
                        memory_spread={"adamw": [90.0, 100.0, 110.0], "galore": [80.0]})
    ax = fig.axes[0]
    with_bars = [c for c in ax.containers if c.has_yerr]
    assert len(with_bars) == 1 and with_bars[0].has_xerr, "only adamw has two seeds or more"
    x_bars, y_bars = with_bars[0].lines[2]
    (x_low, _), (x_high, _) = x_bars.get_segments()[0]
    (_, low), (_, high) = y_bars.get_segments()[0]
    assert (low, high) == pytest.approx((2.9, 3.1))  # mean 3.0 ± sd 0.1
    assert (x_low, x_high) == pytest.approx((90.0, 110.0))  # mean 100 ± sd 10
    front = next(line for line in ax.get_lines() if line.get_label() == "Pareto front")
    assert list(front.get_xdata()) == [80.0, 100.0], "galore, then adamw; blockllm is dominated"
    assert any("± sd of 3 seeds" in t.get_text() for t in ax.get_legend().get_texts())
    plt.close(fig)


def test_lr_sensitivity_plots_each_sweep_and_rings_its_best():
    trials = {"adamw": [(1e-2, 3.4), (1e-3, 3.0), (1e-4, 3.6)], "galore": [(1e-2, 3.1), (3e-2, 3.3), (1e-1, None)]}
    fig = lr_sensitivity_figure(trials)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    curves = {line.get_label(): list(zip(line.get_xdata(), line.get_ydata())) for line in ax.get_lines()}
    assert curves["adamw"] == sorted(trials["adamw"]) and curves["galore"] == sorted(trials["galore"][:2])
    assert [x for x, _ in curves["galore: failed trial"]] == [1e-1], "a failed trial is marked, not drawn as a loss"
    rings = [tuple(c.get_offsets()[0]) for c in ax.collections]
    assert rings == [pytest.approx((1e-3, 3.0)), pytest.approx((1e-2, 3.1))]
    plt.close(fig)


class PageParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.cells, self.urls = [], [], []
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        self.urls += [v for k, v in attrs.items() if k in ("src", "href") and v and not v.startswith("data:")]
        self._in_cell = tag == "td"

    def handle_data(self, data):
        if self._in_cell:
            self.cells.append(data)


def test_html_page_is_one_file_with_its_images_inside(tmp_path):
    png = tmp_path / "plot.png"
    fig = pareto_figure({"adamw": (1.0, 2.0)})
    fig.savefig(png)
    plt.close(fig)
    table = Table(["Method", "Loss"], [[Cell("adamw", "adamw"), Cell("3.0000", 3.0)], [Cell("<b>", "<b>"), Cell("—")]])
    page = html.page("T", ["run `abc`"], [("Results", html.table_html(table)), ("Plots", html.figure_html(html.Figure(png, "c")))])
    parser = PageParser()
    parser.feed(page)
    assert parser.images == ["data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()]
    assert parser.urls == [] and "http" not in page
    assert parser.cells == ["adamw", "3.0000", "<b>", "—"], "cells escaped"
    assert 'data-sort="3.0"' in page and 'data-sort=""' in page and "<code>abc</code>" in page
