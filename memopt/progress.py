"""Progress lines: what the training process prints every `progress_every` steps, and what the train task reads
back from its output to log it and to move the Prefect progress artifact.

    progress step=20 steps=100 train_loss=5.4321 tokens_per_s=2210 elapsed_s=12.3 eta_s=49.2 val_loss=5.5012

One line of `key=value` pairs (logfmt): readable in a terminal as it is, parsed without a format of its own.
`tokens_per_s` is the run's so far, the value of the `tokens_per_s` metric at that step (every token trained ÷ the
training steps' own time, a resume's earlier steps included), so the log, MLflow and the report give one figure;
`eta_s` is the wall-clock time left at the pace of this process so far, evaluations and checkpoints included.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

PREFIX = "progress "


def format_line(values: dict[str, float]) -> str:
    return PREFIX + " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def parse_line(line: str) -> dict[str, float] | None:
    """The values of a progress line; None for any other line."""
    if not line.startswith(PREFIX):
        return None
    values = {}
    for pair in line[len(PREFIX):].split():
        key, _, text = pair.partition("=")
        try:
            values[key] = float(text)
        except ValueError:  # a pair without "=" too: float("") fails
            return None
    return values if {"step", "steps"} <= set(values) else None


def percent(values: dict[str, float]) -> float:
    return 100.0 * values["step"] / max(values["steps"], 1)


def duration(seconds: float) -> str:
    """`42 s`, `3 min 05 s`, `2 h 07 min`; `9 days`, `1,234 years` for the times a mistyped step count gives."""
    days = seconds / 86400
    if days >= 2:
        return f"{days / 365:,.0f} years" if days >= 730 else f"{days:,.0f} days"
    minutes, s = divmod(int(round(seconds)), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m:02d} min" if hours else f"{m} min {s:02d} s" if m else f"{s} s"


def describe(method: str, values: dict[str, float]) -> str:
    """The line for people: `adamw: step 20/100 (20%), train_loss 5.432, val_loss 5.501, 2210 tokens/s, 49 s left`."""
    parts = [f"{method}: step {int(values['step'])}/{int(values['steps'])} ({percent(values):.0f}%)"]
    parts += [f"{key} {values[key]:.4f}" for key in ("train_loss", "val_loss") if key in values]
    if "tokens_per_s" in values:
        parts.append(f"{values['tokens_per_s']:.0f} tokens/s")
    if "eta_s" in values:
        parts.append(f"{duration(values['eta_s'])} left")
    return ", ".join(parts)


class ProgressReporter:
    """Prints a progress line at the first step this process runs, every `every` steps and at the last."""

    def __init__(self, steps: int, first_step: int, every: int, tokens_per_step: int, out: TextIO | None = None):
        self.steps, self.every, self.tokens_per_step = steps, every, tokens_per_step
        self.first = first_step + 1
        self.out = out or sys.stdout
        self.started = time.perf_counter()

    def update(self, step: int, train_loss: float, train_seconds: float, val_loss: float | None = None) -> None:
        """`train_seconds`: the training steps' own time through `step` (Trainer.train_seconds)."""
        if not (step == self.first or step % self.every == 0 or step == self.steps):
            return
        elapsed = time.perf_counter() - self.started
        values = {"step": step, "steps": self.steps, "train_loss": train_loss,
                  "tokens_per_s": step * self.tokens_per_step / train_seconds,
                  "elapsed_s": elapsed, "eta_s": elapsed / (step - self.first + 1) * (self.steps - step)}
        if val_loss is not None:
            values["val_loss"] = val_loss
        print(format_line(values), file=self.out, flush=True)
