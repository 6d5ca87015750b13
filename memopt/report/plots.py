"""The report's plots, each a PNG. Every method keeps one colour across them, and every legend names its
learning rate. The Pareto and lr-sensitivity plots take plain numbers, so any source (one run per method,
seeds, an lr sweep) can feed them."""
from __future__ import annotations

import math
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display here; files only
import matplotlib.pyplot as plt  # noqa: E402

from memopt.report.analysis import pareto_front  # noqa: E402
from memopt.report.gather import MethodResult, parts  # noqa: E402
from memopt.report.tables import PART_NAMES  # noqa: E402
from memopt.vocabulary import Metric  # noqa: E402

DPI = 110


def colours(methods: list[str]) -> dict[str, str]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {m: cycle[i % len(cycle)] for i, m in enumerate(methods)}


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _finish(ax: plt.Axes, title: str, xlabel: str, ylabel: str) -> None:
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def loss_curves(results: list[MethodResult], path: Path) -> Path:
    """Training and validation loss against the optimizer step."""
    colour = colours([r.method for r in results])
    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in results:
        for ax, curve, marker in ((ax_train, r.train_curve, None), (ax_val, r.val_curve, ".")):
            if curve:
                ax.plot(*zip(*curve), label=r.label, marker=marker, color=colour[r.method])
    _finish(ax_train, "Training loss", "optimizer step", "loss")
    _finish(ax_val, "Validation loss (while training)", "optimizer step", "loss")
    return _save(fig, path)


def loss_vs_tokens_and_time(results: list[MethodResult], target: float | None, path: Path) -> Path:
    """Validation loss against the tokens trained and against the training steps' seconds, AdamW's final
    validation loss (the target) drawn across both."""
    colour = colours([r.method for r in results])
    fig, (ax_tokens, ax_time) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in results:
        points = [(s, v) for s, v in r.val_curve if s == 0 or s in r.seconds_at]
        if not points:
            continue
        ax_tokens.plot([r.tokens_at(s) for s, _ in points], [v for _, v in points], marker=".", label=r.label,
                       color=colour[r.method])
        ax_time.plot([r.seconds_at.get(s, 0.0) for s, _ in points], [v for _, v in points], marker=".", label=r.label,
                     color=colour[r.method])
    for ax in (ax_tokens, ax_time):
        if target is not None:
            ax.axhline(target, color="black", linestyle=":", linewidth=1, label=f"target: AdamW's last, {target:.3f}")
    _finish(ax_tokens, "Validation loss against tokens", "tokens trained", "validation loss")
    _finish(ax_time, "Validation loss against time", "training seconds (steps only)", "validation loss")
    return _save(fig, path)


def memory_over_time(results: list[MethodResult], path: Path) -> Path:
    """Each process's sampled resident memory, its exact peak (the kernel's high-water mark, which samples
    taken every memory_interval_s can miss) drawn as a dashed line; the axis starts at 0."""
    colour = colours([r.method for r in results])
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for r in results:
        if r.memory_samples:
            ax.plot(*zip(*r.memory_samples), label=r.label, color=colour[r.method])
        if r.peak_rss_mb is not None:
            ax.axhline(r.peak_rss_mb, color=colour[r.method], linestyle="--", linewidth=1,
                       label=f"{r.method} peak {r.peak_rss_mb:.0f} MB")
    ax.set_ylim(bottom=0)
    _finish(ax, "Process memory (RSS) during training", "seconds since the first sample", "MB")
    return _save(fig, path)


def _stack(ax: plt.Axes, shown: list[MethodResult], segments: dict) -> list[float]:
    """Stacked bars, one per method, of `segments` ({name: (colour, hatch, value(r))}); returns the tops."""
    bottom = [0.0] * len(shown)
    for name, (colour, hatch, value) in segments.items():
        heights = [value(r) for r in shown]
        ax.bar(range(len(shown)), heights, bottom=bottom, label=name, color=colour, hatch=hatch, edgecolor="black",
               linewidth=0.5)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_xticks(range(len(shown)), [r.label for r in shown], rotation=20, ha="right")
    ax.set_ylim(bottom=0)
    return bottom


def memory_breakdown(results: list[MethodResult], path: Path) -> Path:
    """Left: one stacked bar per method of the measured step's peak: runtime, weights, gradients, optimizer
    state, peak activations and the rest, with a tick at the whole process's peak. Right: the four parts
    alone (what the method changes), a diamond at the sum of their formulas."""
    shown = [r for r in results if r.breakdown]
    fig, (ax_all, ax_parts) = plt.subplots(1, 2, figsize=(max(10.0, 2.4 * len(shown) + 5), 5.2))
    tensors = {name: (None, None, lambda r, p=part: parts(r)[p] or 0.0) for part, name in PART_NAMES.items()}
    _stack(ax_all, shown, {"Runtime": ("lightgrey", None, lambda r: r.breakdown.get(Metric.RUNTIME_MB, 0.0)), **tensors,
                           "Rest": ("white", "//", lambda r: max(0.0, r.breakdown.get(Metric.REST_MB, 0.0)))})
    peaks = [(i, r.peak_mb) for i, r in enumerate(shown) if r.peak_mb is not None]
    if peaks:
        ax_all.scatter(*zip(*peaks), marker="_", s=900, color="black", zorder=3, label="whole process's peak")
    _stack(ax_parts, shown, tensors)
    formulas = [(i, sum(e.values())) for i, e in enumerate(parts(r, estimate=True) for r in shown) if None not in e.values()]
    if formulas:
        ax_parts.scatter(*zip(*formulas), marker="D", s=40, facecolors="none", edgecolors="black", zorder=3,
                         label="sum of the formulas")
    step = next((r.breakdown_step for r in shown if r.breakdown_step), None)
    _finish(ax_all, f"Step {step}'s peak, whole", "", "MB")
    _finish(ax_parts, "Its tensors", "", "MB")
    for ax, scale in ((ax_all, 0.3), (ax_parts, 1.0)):  # the peak's tick is 30 points wide
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0), markerscale=scale)
    return _save(fig, path)


def pareto(points: dict[str, tuple[float, float]], path: Path, spread: dict[str, list[float]] | None = None,
           labels: dict[str, str] | None = None, memory_spread: dict[str, list[float]] | None = None) -> Path:
    return _save(pareto_figure(points, spread, labels, memory_spread), path)


def _sd(values: list[float] | None) -> float | None:
    """The sample standard deviation of the finite values, None under two (no spread to draw)."""
    finite = [v for v in values or [] if v is not None and math.isfinite(v)]
    return statistics.stdev(finite) if len(finite) >= 2 else None


def pareto_figure(points: dict[str, tuple[float, float]], spread: dict[str, list[float]] | None = None,
                  labels: dict[str, str] | None = None,
                  memory_spread: dict[str, list[float]] | None = None) -> plt.Figure:
    """Peak memory against final validation loss ({method: (memory MB, loss)}, with seeds their means), the
    front of methods no other beats on both drawn as a line; error bars of ± one standard deviation where a
    method has two seeds or more: vertical from `spread` ({method: [loss per seed]}), horizontal from
    `memory_spread` ({method: [peak MB per seed]})."""
    colour = colours(list(points))
    fig, ax = plt.subplots(figsize=(8, 5))
    for method, (memory, loss) in points.items():
        yerr, xerr = _sd((spread or {}).get(method)), _sd((memory_spread or {}).get(method))
        n = max(len((spread or {}).get(method, [])), len((memory_spread or {}).get(method, [])))
        ax.errorbar(memory, loss, yerr=yerr, xerr=xerr, fmt="o", capsize=4, color=colour[method],
                    label=(labels or {}).get(method, method) + (f" (± sd of {n} seeds)" if (yerr, xerr) != (None, None) else ""))
        ax.annotate(method, (memory, loss), textcoords="offset points", xytext=(6, 6), fontsize="small")
    front = pareto_front(points)
    if front:
        ax.step([points[m][0] for m in front], [points[m][1] for m in front], where="post", color="black",
                linestyle="--", linewidth=1, label="Pareto front")
    _finish(ax, "Memory against quality (lower-left is better)", "peak memory (MB)", "final validation loss")
    return fig


def lr_sensitivity(trials: dict[str, list[tuple[float, float | None]]], path: Path) -> Path:
    return _save(lr_sensitivity_figure(trials), path)


def lr_sensitivity_figure(trials: dict[str, list[tuple[float, float | None]]]) -> plt.Figure:
    """Validation loss against the learning rate ({method: [(lr, loss), ...]}, loss None or not finite for a
    trial that failed, e.g. diverged), log scale, each method's best lr ringed, failed trials an x along the top."""
    colour = colours(list(trials))
    fig, ax = plt.subplots(figsize=(8, 5))
    for method, points in trials.items():
        scored = sorted((lr, loss) for lr, loss in points if loss is not None and math.isfinite(loss))
        failed = sorted(lr for lr, loss in points if loss is None or not math.isfinite(loss))
        if scored:
            ax.plot(*zip(*scored), marker="o", label=method, color=colour[method])
            ax.scatter(*min(scored, key=lambda p: p[1]), s=160, facecolors="none", edgecolors=colour[method],
                       linewidths=1.5)
        if failed:
            ax.plot(failed, [0.97] * len(failed), "x", color=colour[method], markersize=9, linestyle="none",
                    transform=ax.get_xaxis_transform(), label=f"{method}: failed trial")
    ax.set_xscale("log")
    _finish(ax, "Learning-rate sensitivity (ringed: the best lr; x: a failed trial)", "learning rate", "validation loss")
    return fig
