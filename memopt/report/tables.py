"""The report's tables: one structure (a header and rows of cells, each with the text shown and the value it
sorts by) rendered as Markdown here and as a sortable HTML table by memopt/report/html.py."""
from __future__ import annotations

from dataclasses import dataclass

from memopt.report.analysis import YARDSTICK, ToTarget
from memopt.report.gather import Comparison, MethodResult, parts
from memopt.vocabulary import MemoryPart, Metric

PART_NAMES = {MemoryPart.WEIGHTS: "Weights", MemoryPart.GRADIENTS: "Gradients",
              MemoryPart.OPTIMIZER_STATE: "Optimizer State", MemoryPart.ACTIVATIONS: "Peak Activations"}


@dataclass(frozen=True)
class Cell:
    text: str
    sort: float | str | None = None  # None: sorts last


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[Cell]]

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(c.text.replace("\n", " ").replace("|", "\\|") for c in row) + " |" for row in self.rows]
        return "\n".join(lines)


def number(value: float | None, spec: str) -> Cell:
    return Cell("—" if value is None else format(value, spec), value)


def text(value: str) -> Cell:
    return Cell(value, value)


def shows_accuracy(results: list[MethodResult]) -> bool:
    """Answer accuracy has a column only when some method answers anything: at 0 everywhere it says nothing
    about the methods (a small model trained briefly does not yet write a boxed answer)."""
    return any(r.accuracy for r in results)


def epoch_time(r: MethodResult) -> Cell:
    if r.epoch_time_s is None:
        return number(None, "")
    shown = f"{r.epoch_time_s:.1f}" if r.epoch_time_measured else f"≈{r.epoch_time_s:.1f} (estimate)"
    return Cell(shown, r.epoch_time_s)


def summary(results: list[MethodResult]) -> Table:
    adamw = next((r.state_mb for r in results if r.method == YARDSTICK and r.state_mb), None)
    accuracy = shows_accuracy(results)
    header = ["Method", "Status", "LR", "Final Train Loss", "Final Val Loss", "Perplexity",
              *(["Answer Accuracy"] if accuracy else []), "Peak Memory (MB)", "Training Memory (MB)",
              "Optimizer State (MB)", "State % of AdamW", "Tokens/s", "Training Time (s)", "Epoch Time (s)"]
    rows = []
    for r in results:
        status = r.status if r.status != "FAILED" else f"FAILED: {r.reason or 'no reason recorded'}"
        share = None if adamw is None or r.state_mb is None else 100 * r.state_mb / adamw
        rows.append([
            text(r.method), text(status), number(r.lr, ".3g"), number(r.train_loss, ".4f"), number(r.val_loss, ".4f"),
            number(r.perplexity, ".2f"), *([number(r.accuracy, ".2%")] if accuracy else []),
            number(r.peak_mb, ".0f"), number(r.training_mb, ".0f"), number(r.state_mb, ".3f"), number(share, ".1f"),
            number(r.tokens_per_s, ".0f"), number(r.train_seconds, ".1f"), epoch_time(r),
        ])
    return Table(header, rows)


def target_heading(target: float) -> str:
    return f"Time and tokens to AdamW's validation loss at its last evaluation ({target:.4f})"


def to_target_table(rows: list[ToTarget]) -> Table:
    header = ["Method", "Reached at Step", "Tokens", "Seconds", "Speed-up (tokens)", "Speed-up (time)"]
    body = []
    for t in rows:
        if t.reached is None:
            body.append([text(t.method), Cell("not reached"), *(number(None, "") for _ in range(4))])
            continue
        body.append([text(t.method), number(t.reached.step, "d"), number(t.reached.tokens, ",d"),
                     number(t.reached.seconds, ".1f"), number(t.tokens_speedup, ".2f"), number(t.time_speedup, ".2f")])
    return Table(header, body)


def megabytes(value: float) -> str:
    """Three significant figures or so, without an exponent: 1234, 123, 12.3, 0.123."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"


def _measured_and_estimate(measured: float | None, estimate: float | None, at_least: bool = False) -> Cell:
    if measured is None:
        return number(None, "")
    shown = ("≥" if at_least else "") + megabytes(measured) + ("" if estimate is None else f" ({megabytes(estimate)})")
    return Cell(shown, measured)


def breakdown_table(results: list[MethodResult]) -> Table:
    header = ["Method", "Step", *(f"{name} (MB)" for name in PART_NAMES.values()), "Runtime (MB)", "Rest (MB)",
              "Step Peak (MB)"]
    rows = []
    for r in results:
        if not r.breakdown:
            continue
        measured, estimate = parts(r), parts(r, estimate=True)
        rows.append([
            text(r.method), number(r.breakdown_step, "d"),
            *(_measured_and_estimate(measured[p], estimate[p], r.checkpointed and p == MemoryPart.ACTIVATIONS)
              for p in PART_NAMES),
            *(_measured_and_estimate(r.breakdown.get(key), None) for key in (Metric.RUNTIME_MB, Metric.REST_MB,
                                                                              Metric.STEP_PEAK_MB)),
        ])
    return Table(header, rows)


def notes(comparison: Comparison, target: float | None) -> list[str]:
    """What each figure is, one item per idea (Markdown inline code allowed)."""
    results = comparison.results
    peak = ("torch's peak allocated CUDA memory" if any(r.cuda for r in results) else
            "the training process's high-water mark of resident memory (the kernel's VmHWM), imports included")
    items = [
        "LR: the learning rate each method's optimizer was built with (the peak of the cosine schedule with warm-up).",
        "Final Val Loss and Perplexity: the final model on the whole validation split (the evaluate task).",
        f"Peak Memory: {peak}. Training Memory: the peak resident memory minus the resident memory just before the "
        "model was built. Optimizer State: every tensor the optimizer holds between steps, measured. MB: 2^20 bytes.",
        "Tokens/s: every token the training steps consumed ÷ the time of those steps alone (forward, backward, "
        "optimizer step; no evaluation, no checkpoints): the run's last logged `tokens_per_s`. Training Time: that "
        "time. Epoch Time: measured over the complete epochs that ran, marked estimate where fewer steps than one "
        "epoch ran (then it is the mean step time × the steps of one epoch).",
    ]
    if not shows_accuracy(results):
        items.append("Answer Accuracy (exact match of the final boxed answer, greedy generation, on held-out problems) "
                     "is 0 for every method here, so it has no column: a model this small, trained this briefly, does "
                     "not yet write the answer format. Each child run still records it as `answer_accuracy`.")
    items += [
        "Time and tokens to target: the first evaluation while training at or below AdamW's last validation loss "
        f"while training ({'—' if target is None else f'{target:.4f}'}, on the same `eval_batches` batches as every "
        "curve), its tokens and training seconds; speed-up = AdamW's ÷ the method's (> 1: sooner). The resolution "
        "is `eval_every` steps.",
        "Memory breakdown: one training step measured at its phase boundaries: the exact bytes of the weights, of "
        "the gradients when backward ends, of the optimizer state, and the most bytes autograd's saved tensors held "
        "at once (peak activations; the fused loss's gradients count here). In brackets each part's formula from "
        "the shapes (none for activations under autocast, gradient checkpointing, or with frozen or "
        "reparameterized tensors; ≥: under gradient checkpointing the checkpointed layers' own tensors are held "
        "by torch outside autograd's saved tensors, so the figure is a lower bound). Runtime: what the process "
        "held right before the model was built (resident memory on CPU: Python, the libraries, the data; "
        "allocated memory on CUDA). Rest: the step's own peak minus the runtime and the parts: temporaries, code "
        "loaded since, memory the allocator keeps (gradients and activations do not all coexist, so it is a "
        "lower bound).",
    ]
    return items


def environment_table(comparison: Comparison) -> Table:
    facts = {"date": comparison.date, **comparison.environment}
    return Table(["", ""], [[text(name), text(value)] for name, value in facts.items()])
