"""The comparison report, built from MLflow alone: the runs under one parent and their metric histories."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display here; files only
import matplotlib.pyplot as plt  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Run  # noqa: E402

from memopt.report_tuning import seeds_section, sweep_section  # noqa: E402
from memopt.tracking import child_runs, seed_runs, throughput  # noqa: E402
from memopt.vocabulary import Metric, Param, Tag  # noqa: E402

TABLE = "comparison_results.md"
LOSS_PLOT = "cpu_optimization_comparison.png"
MEMORY_PLOT = "memory_over_time.png"
MIB = 1024 * 1024
NOTES = """Peak Memory is the training process's high-water mark (the kernel's VmHWM), imports included;
Training Memory is that peak minus the process's resident memory just before the model was built.
Optimizer State is every tensor the optimizer holds between steps, measured. Tokens/s counts the
training steps alone (forward, backward, optimizer step). Each number is the mean over the method's seed
runs (the Seeds section below gives their spread); the plots draw each method's first seed.
"""


@dataclass
class MethodResult:
    method: str
    status: str
    reason: str
    train_loss: float | None = None
    val_loss: float | None = None
    epoch_time_s: float | None = None
    peak_rss_mb: float | None = None
    training_mb: float | None = None  # peak minus the process's RSS before the model was built
    perplexity: float | None = None
    accuracy: float | None = None
    tokens_per_s: float | None = None
    state_mb: float | None = None


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float, int]]:
    return sorted((m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, key))


def method_result(client: MlflowClient, run: Run, history_run: Run | None = None) -> MethodResult:
    """A method's row from its run. With seed runs, the run's metrics are their means (memopt/tracking.py)
    and `history_run` (its first seed run) gives the step times."""
    metrics = run.data.metrics
    source = history_run or run
    r = MethodResult(run.data.tags[Tag.METHOD], run.info.status, run.data.tags.get(Tag.FAILURE_REASON, ""))
    step_times = [v for _, v, _ in _history(client, source.info.run_id, Metric.STEP_TIME_S)]
    if step_times:
        steps_per_epoch = max(1, int(source.data.params.get(Param.STEPS_PER_EPOCH, len(step_times))))
        r.epoch_time_s = sum(step_times) / len(step_times) * steps_per_epoch
    # an optimizer step takes the global batch: every process's, every accumulation round's
    r.tokens_per_s = metrics.get(Metric.TOKENS_PER_S) if history_run else throughput(client, run)
    r.train_loss = metrics.get(Metric.TRAIN_LOSS)
    r.val_loss = metrics.get(Metric.FINAL_VAL_LOSS, metrics.get(Metric.VAL_LOSS))
    r.peak_rss_mb = metrics.get(Metric.PEAK_RSS_MB)
    if r.peak_rss_mb is not None and Metric.RSS_AT_START_MB in metrics:
        r.training_mb = r.peak_rss_mb - metrics[Metric.RSS_AT_START_MB]
    r.perplexity = metrics.get(Metric.PERPLEXITY)
    r.accuracy = metrics.get(Metric.ANSWER_ACCURACY)
    if Metric.OPTIMIZER_STATE_BYTES in metrics:
        r.state_mb = metrics[Metric.OPTIMIZER_STATE_BYTES] / MIB
    return r


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def markdown_table(results: list[MethodResult]) -> str:
    adamw = next((r.state_mb for r in results if r.method == "adamw" and r.state_mb), None)
    header = [
        "Method", "Status", "Final Train Loss", "Final Val Loss", "Avg Epoch Time (s)", "Peak Memory (MB)", "Training Memory (MB)",
        "Perplexity", "Answer Accuracy", "Tokens/s", "Optimizer State (MB)", "State % of AdamW",
    ]
    rows = []
    for r in results:
        status = r.status if r.status != "FAILED" else f"FAILED: {r.reason or 'no reason recorded'}"
        share = None if adamw is None or r.state_mb is None else 100 * r.state_mb / adamw
        rows.append([
            r.method, status, _fmt(r.train_loss, ".4f"), _fmt(r.val_loss, ".4f"), _fmt(r.epoch_time_s, ".1f"),
            _fmt(r.peak_rss_mb, ".0f"), _fmt(r.training_mb, ".0f"), _fmt(r.perplexity, ".2f"), _fmt(r.accuracy, ".2%"), _fmt(r.tokens_per_s, ".0f"),
            _fmt(r.state_mb, ".3f"), _fmt(share, ".1f"),
        ])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row).replace("\n", " ") + " |" for row in rows]
    return "\n".join(lines)


def _plot_losses(client: MlflowClient, runs: dict[str, Run], path: Path) -> None:
    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(12, 4.5))
    for method, run in runs.items():
        for ax, key in ((ax_train, Metric.TRAIN_LOSS), (ax_val, Metric.VAL_LOSS)):
            points = _history(client, run.info.run_id, key)
            if points:
                ax.plot([s for s, _, _ in points], [v for _, v, _ in points], label=method, marker="." if key == Metric.VAL_LOSS else None)
    for ax, title in ((ax_train, "Training loss"), (ax_val, "Validation loss")):
        ax.set(title=title, xlabel="optimizer step", ylabel="loss")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_memory(client: MlflowClient, runs: dict[str, Run], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for method, run in runs.items():
        points = sorted(_history(client, run.info.run_id, Metric.MEMORY_RSS_MB), key=lambda p: p[2])
        if points:
            t0 = points[0][2]
            ax.plot([(t - t0) / 1000 for _, _, t in points], [v for _, v, _ in points], label=method)
    ax.set(title="Process memory (RSS) during training", xlabel="seconds since training began (first sample)", ylabel="MB")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(tracking_uri: str, parent_run_id: str, out_dir: Path) -> tuple[Path, list[MethodResult]]:
    """Write the table and plots into `out_dir`; returns the table's path and the rows."""
    client = MlflowClient(tracking_uri)
    children = child_runs(client, parent_run_id)
    first_seed = {m: next(iter(seed_runs(client, run.info.run_id)), None) for m, run in children.items()}
    results = [method_result(client, run, first_seed[m]) for m, run in children.items()]
    histories = {m: first_seed[m] or run for m, run in children.items()}  # the plots draw each method's first seed
    regime = client.get_run(parent_run_id).data.tags.get(Tag.REGIME, "pretrain")
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / TABLE
    table.write_text(f"# Optimizer comparison\n\nMLflow parent run `{parent_run_id}`.\n\n{markdown_table(results)}\n\n{NOTES}\n"
                     f"{sweep_section(client, children)}\n\n{seeds_section(client, children, regime)}\n")
    _plot_losses(client, histories, out_dir / LOSS_PLOT)
    _plot_memory(client, histories, out_dir / MEMORY_PLOT)
    return table, results
