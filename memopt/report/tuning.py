"""The report's sections on tuning and seeds, from MLflow alone: each method's lr sweep, and its result over
its seeds with the significance of the gaps between methods (memopt/stats.py states the rule). Each section is
(heading, intro, Table), rendered in Markdown and HTML by memopt/report/__init__.py.

The plain inputs a plot wants come from `sweep_points` ({method: [(lr, val_loss or None), ...]}) and
`seed_metric` ({method: [value per seed run]}).
"""
from __future__ import annotations

import math

from mlflow import MlflowClient
from mlflow.entities import Run

from memopt.regimes import LEARNING_BAR, why_not_learning
from memopt.report.tables import Cell, Table, text
from memopt.stats import SIGNIFICANCE_RULE, Spread, spread, verdict
from memopt.tracking import seed_runs, seed_values, trial_runs
from memopt.vocabulary import Metric, Param, Tag

LR_SOURCES = {"sweep": "swept", "--lr": "--lr (not swept)", "method_args": "method_args (not swept)",
              "default": "the method's own (not swept: --sweep_steps 0)"}


def sweep_points(client: MlflowClient, children: dict[str, Run]) -> dict[str, list[tuple[float, float | None]]]:
    """{method: [(lr, validation loss at the trial's last step, None if the trial did not finish), ...]}."""
    points = {}
    for method, run in children.items():
        trials = trial_runs(client, run.info.run_id)
        if trials:
            points[method] = [(float(t.data.tags[Tag.TRIAL_LR]),
                               t.data.metrics.get(Metric.VAL_LOSS) if t.info.status == "FINISHED" else None) for t in trials]
    return points


def seed_metric(client: MlflowClient, children: dict[str, Run], key: str) -> dict[str, list[float]]:
    """{method: [`key` of each finished seed run]} (tokens_per_s: each run's whole-run throughput)."""
    values = {}
    for method, run in children.items():
        finished = [r for r in seed_runs(client, run.info.run_id) if r.info.status == "FINISHED"]
        values[method] = seed_values(client, finished).get(key, [])
    return values


Section = tuple[str, str, Table]  # heading, intro, table


def sweep_section(client: MlflowClient, children: dict[str, Run]) -> Section:
    points = sweep_points(client, children)
    rows = []
    for method, run in children.items():
        params = run.data.params
        trials = " · ".join(f"{lr:g}: {'—' if loss is None else format(loss, '.4f')}" for lr, loss in points.get(method, []))
        edge = run.data.tags.get(Tag.LR_ON_EDGE)
        note = f"the best lr is the grid's {edge}: the optimum may lie beyond it; widen the grid" if edge else ""
        chosen = params.get(Param.CHOSEN_LR)
        rows.append([text(method), text(LR_SOURCES.get(params.get(Param.LR_SOURCE, ""), "—")),
                     text(params.get(Param.LR_GRID) or "—"), text(trials or "—"),
                     Cell(f"{float(chosen):g}", float(chosen)) if chosen else Cell("—"), text(note)])
    intro = ("Every method is swept over the same way, the baseline included: one short trial per learning rate "
             "(its own process and MLflow run, nested under the method's run), scored by its validation loss at "
             "its last step (— : the trial failed, e.g. a NaN loss); the best trial's lr trains the seed runs.")
    return "Learning-rate sweep", intro, Table(["Method", "lr", "Grid", "Trial val loss by lr", "Chosen lr", "Note"], rows)


def seeds_section(client: MlflowClient, children: dict[str, Run], regime: str) -> Section:
    finished = {m: [r for r in seed_runs(client, run.info.run_id) if r.info.status == "FINISHED"] for m, run in children.items()}
    values = {m: seed_values(client, runs) for m, runs in finished.items()}
    losses = {m: spread(v[Metric.FINAL_VAL_LOSS]) for m, v in values.items() if _finite(v.get(Metric.FINAL_VAL_LOSS))}
    best = min(losses, key=lambda m: losses[m].mean) if losses else None
    rows = []
    for method in children:
        per_seed = values[method]
        loss = losses.get(method)
        initial = per_seed.get(Metric.INITIAL_VAL_LOSS)
        ratio = loss.mean / spread(initial).mean if loss and _finite(initial) else None
        speed, peak = _spread_of(per_seed.get(Metric.TOKENS_PER_S)), _spread_of(per_seed.get(Metric.PEAK_RSS_MB))
        rows.append([
            text(method), text(",".join(r.data.tags[Tag.SEED] for r in finished[method]) or "—"),
            _spread_cell(loss, ".4f"), Cell("—" if ratio is None else f"{ratio:.2f}", ratio),
            text(_versus(losses, method, best, "best")), text(_versus(losses, method, "adamw", "AdamW")),
            _spread_cell(speed, ".0f"), _spread_cell(peak, ".0f"), text(why_not_learning(method, regime, ratio)),
        ])
    intro = (f"Each method's final configuration (the chosen lr, the whole budget) once per seed, regime `{regime}`: "
             "mean ± standard deviation (min–max) over the seeds of the final validation loss (whole validation "
             "split), tokens/s (whole-run throughput of the training steps) and peak memory (the process's "
             f"high-water mark). Significance: {SIGNIFICANCE_RULE}. A method learns when its final ÷ initial "
             f"validation loss is at most {LEARNING_BAR}; where it does not, the note says why.")
    return "Seeds", intro, Table(["Method", "Seeds", "Final val loss", "Final ÷ initial", "Δ vs best", "Δ vs AdamW",
                                  "Tokens/s", "Peak memory (MB)", "Note"], rows)


def _finite(values: list[float] | None) -> bool:
    return bool(values) and any(math.isfinite(v) for v in values)


def _spread_of(values: list[float] | None) -> Spread | None:
    return spread(values) if _finite(values) else None


def _spread_cell(s: Spread | None, spec: str) -> Cell:
    return Cell("—") if s is None else Cell(s.text(spec), s.mean)


def _versus(losses: dict[str, Spread], method: str, other: str | None, label: str) -> str:
    """`+0.0123 (not significant)`: `method`'s gap to `other`; `label` for `other` itself, "—" when either is missing."""
    if other is None or method not in losses or other not in losses:
        return "—"
    if method == other:
        return label
    gap = losses[method].mean - losses[other].mean
    return f"{gap:+.4f} ({verdict(losses[method], losses[other])})"
