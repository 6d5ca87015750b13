"""The comparison report, built from MLflow alone: the runs under one parent and their metric histories.

    write_report(tracking_uri, parent_run_id, out_dir)    # Markdown, one self-contained HTML page, the PNGs
    log_run_plots(tracking_uri, run_id, out_dir)          # one method's own plots, into its child run
    python -m memopt.report PARENT_RUN_ID --tracking_uri sqlite:///mlflow.db --output_dir results/report

Modules by idea: gather (MLflow -> MethodResult), analysis (Pareto front, time to target), tables, plots,
html, tuning (the lr sweep and seed sections). The lr-sensitivity plot and the Pareto plot's seed error bars take
plain inputs (`lr_trials={method: [(lr, val_loss or None), ...]}`, `seed_losses={method: [final val loss per
seed]}`, `seed_peaks={method: [peak memory MB per seed]}`), read from the trial and seed runs unless given, and
are drawn only when there is data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient

from memopt.report import html, plots
from memopt.report.analysis import ToTarget, pareto_front, to_target
from memopt.report.gather import Comparison, MethodResult, gather, method_result, parts
from memopt.report.tables import breakdown_table, environment_table, notes, summary, target_heading, to_target_table
from memopt.report.tuning import Section, seed_metric, seeds_section, sweep_points, sweep_section
from memopt.tracking import child_runs
from memopt.vocabulary import Metric, Tag

TABLE = "comparison_results.md"
HTML = "comparison_report.html"
LOSS_PLOT = "cpu_optimization_comparison.png"
TOKENS_TIME_PLOT = "loss_vs_tokens_and_time.png"
MEMORY_PLOT = "memory_over_time.png"
BREAKDOWN_PLOT = "memory_breakdown.png"
PARETO_PLOT = "pareto.png"
LR_PLOT = "lr_sensitivity.png"
BREAKDOWN_HEADING = "Memory breakdown (MB: measured, in brackets the formula)"


@dataclass
class Report:
    comparison: Comparison
    target: float | None
    to_target: list[ToTarget]
    sections: list[Section] = field(default_factory=list)  # the lr sweep and the seeds
    files: list[Path] = field(default_factory=list)  # every file written, the Markdown first

    @property
    def table(self) -> Path:
        return self.files[0]

    @property
    def results(self) -> list[MethodResult]:
        return self.comparison.results

    def best(self) -> MethodResult | None:
        """The finished method with the lowest final validation loss."""
        done = [r for r in self.results if r.status == "FINISHED" and r.val_loss is not None]
        return min(done, key=lambda r: r.val_loss) if done else None

    def records(self) -> list[dict]:
        """One row per method, plain values: the Prefect table artifact and MLflow's `log_table`."""
        reached = {t.method: t.reached for t in self.to_target}
        rows = []
        for r in self.results:
            hit = reached.get(r.method)
            rows.append({
                "parent_run_id": self.comparison.parent_run_id, "method": r.method, "status": r.status, "lr": r.lr,
                "final_train_loss": r.train_loss, "final_val_loss": r.val_loss, "final_val_perplexity": r.perplexity,
                "answer_accuracy": r.accuracy, "peak_memory_mb": r.peak_mb, "training_memory_mb": r.training_mb,
                "optimizer_state_mb": r.state_mb, "tokens_per_s": r.tokens_per_s, "training_time_s": r.train_seconds,
                "epoch_time_s": r.epoch_time_s, "epoch_time_measured": r.epoch_time_measured,
                "steps_to_target": hit.step if hit else None, "tokens_to_target": hit.tokens if hit else None,
                "seconds_to_target": hit.seconds if hit else None,
                **{f"{part}_mb": value for part, value in parts(r).items()},
            })
        return rows


def commands(comparison: Comparison, out_dir: Path) -> list[str]:
    """The command that runs the comparison again, and the one that rebuilds this report from the store."""
    from memopt.cli import command_line, validate
    from memopt.config import CompareConfig, ConfigError

    rebuild = (f"python -m memopt.report {comparison.parent_run_id} --tracking_uri {comparison.tracking_uri} "
               f"--output_dir {out_dir}")
    try:
        cfg = validate(CompareConfig, {**comparison.config, "tracking_uri": comparison.tracking_uri})
    except ConfigError:  # a configuration this version no longer reads
        return [rebuild]
    return [command_line(cfg), rebuild]


def _figures(report: Report, out_dir: Path, lr_trials: dict | None, seed_losses: dict | None,
             seed_peaks: dict | None) -> list[html.Figure]:
    results = report.results
    points = {r.method: (r.peak_mb, r.val_loss) for r in results
              if r.status == "FINISHED" and r.peak_mb is not None and r.val_loss is not None}
    figures = [
        html.Figure(plots.pareto(points, out_dir / PARETO_PLOT, seed_losses, {r.method: r.label for r in results},
                                 seed_peaks),
                    "Peak memory against final validation loss; the dashed line is the Pareto front "
                    f"({', '.join(pareto_front(points)) or 'no method finished'})."),
        html.Figure(plots.memory_breakdown(results, out_dir / BREAKDOWN_PLOT),
                    "Where one training step's memory goes, measured: left its whole peak, right its tensors alone "
                    "(the diamond: the sum of their formulas; the table above gives each)."),
        html.Figure(plots.loss_vs_tokens_and_time(results, report.target, out_dir / TOKENS_TIME_PLOT),
                    "Validation loss against tokens and against the training steps' seconds; dotted: the target."),
        html.Figure(plots.loss_curves(results, out_dir / LOSS_PLOT), "Training and validation loss per optimizer step."),
        html.Figure(plots.memory_over_time(results, out_dir / MEMORY_PLOT),
                    "Each training process's resident memory as sampled; dashed: its exact peak (the kernel's "
                    "high-water mark, which the samples can miss)."),
    ]
    if lr_trials and any(sum(loss is not None for _, loss in trials) >= 2 for trials in lr_trials.values()):
        figures.append(html.Figure(plots.lr_sensitivity(lr_trials, out_dir / LR_PLOT),
                                   "Validation loss of each lr trial; ringed: the best, the lr each method kept; x: a trial that failed."))
    return figures


def _markdown(report: Report, figures: list[html.Figure], run_link: str, cmds: list[str]) -> str:
    c = report.comparison
    out = [f"# Optimizer comparison\n\nMLflow parent run {run_link} (experiment {c.experiment_id}), started {c.date}.",
           summary(c.results).markdown()]
    if report.target is not None:
        out += [f"## {target_heading(report.target)}",
                to_target_table(report.to_target).markdown()]
    out += [f"## {BREAKDOWN_HEADING}", breakdown_table(c.results).markdown()]
    for heading, intro, table in report.sections:
        out += [f"## {heading}", intro, table.markdown()]
    out += ["## Plots", *(f"![{f.caption}]({f.path.name})" for f in figures)]
    out += ["## Notes", "\n".join(f"- {item}" for item in notes(c, report.target))]
    out += ["## Environment", environment_table(c).markdown(), *(f"```\n{cmd}\n```" for cmd in cmds)]
    return "\n\n".join(out) + "\n"


def _html(report: Report, figures: list[html.Figure], cmds: list[str]) -> str:
    c = report.comparison
    sections = [("Results", html.table_html(summary(c.results)))]
    if report.target is not None:
        sections.append((target_heading(report.target),
                         html.table_html(to_target_table(report.to_target))))
    sections += [(BREAKDOWN_HEADING, html.table_html(breakdown_table(c.results))),
                 *((heading, f"<p>{html.inline_markdown(intro)}</p>" + html.table_html(table))
                   for heading, intro, table in report.sections),
                 ("Plots", "".join(html.figure_html(f) for f in figures)),
                 ("Notes", html.items_html(notes(c, report.target))),
                 ("Environment", html.table_html(environment_table(c), sortable=False) + html.pre_html(cmds))]
    intro = [f"MLflow parent run `{c.parent_run_id}` (experiment {c.experiment_id}, store `{c.tracking_uri}`), "
             f"started {c.date}. Click a column's heading to sort by it."]
    return html.page("Optimizer comparison", intro, sections)


def write_report(tracking_uri: str, parent_run_id: str, out_dir: Path, *, run_link: str | None = None,
                 lr_trials: dict[str, list[tuple[float, float | None]]] | None = None,
                 seed_losses: dict[str, list[float]] | None = None,
                 seed_peaks: dict[str, list[float]] | None = None) -> Report:
    """Write the Markdown report, the HTML page and the plots into `out_dir`. `run_link`: how the Markdown names
    the parent run (e.g. a link to the MLflow UI); the HTML names it by id only (no external URL)."""
    comparison = gather(tracking_uri, parent_run_id)
    target, reached = to_target(comparison)
    client = MlflowClient(tracking_uri)
    children = child_runs(client, parent_run_id)
    regime = client.get_run(parent_run_id).data.tags.get(Tag.REGIME, "pretrain")
    report = Report(comparison, target, reached, [sweep_section(client, children), seeds_section(client, children, regime)])
    lr_trials = sweep_points(client, children) if lr_trials is None else lr_trials
    seed_losses = seed_metric(client, children, Metric.FINAL_VAL_LOSS) if seed_losses is None else seed_losses
    seed_peaks = seed_metric(client, children, Metric.PEAK_RSS_MB) if seed_peaks is None else seed_peaks
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = _figures(report, out_dir, lr_trials, seed_losses, seed_peaks)
    cmds = commands(comparison, out_dir)
    table, page = out_dir / TABLE, out_dir / HTML
    table.write_text(_markdown(report, figures, run_link or f"`{parent_run_id}`", cmds))
    page.write_text(_html(report, figures, cmds))
    report.files = [table, page, *(f.path for f in figures)]
    return report


def log_run_plots(tracking_uri: str, run_id: str, out_dir: Path) -> None:
    """One method's own loss and memory plots, into `out_dir` and its run's artifacts (plots/): the MLflow
    compare page sets the children's plots side by side."""
    client = MlflowClient(tracking_uri)
    result = [method_result(client, client.get_run(run_id))]
    out_dir.mkdir(parents=True, exist_ok=True)
    plots.loss_curves(result, out_dir / LOSS_PLOT)
    plots.memory_over_time(result, out_dir / MEMORY_PLOT)
    client.log_artifacts(run_id, str(out_dir), "plots")
