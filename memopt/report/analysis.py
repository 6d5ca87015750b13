"""The questions the report answers, as plain functions of plain numbers: which methods are on the
memory/loss Pareto front, and when each method reaches a target loss."""
from __future__ import annotations

from dataclasses import dataclass

from memopt.report.gather import Comparison, MethodResult

YARDSTICK = "adamw"


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """The methods no other beats on both memory and loss ((memory, loss) each, lower is better), by memory."""
    front, best_loss = [], float("inf")
    for method, (_, loss) in sorted(points.items(), key=lambda kv: (kv[1][0], kv[1][1])):
        if loss < best_loss:
            front.append(method)
            best_loss = loss
    return front


@dataclass(frozen=True)
class Reached:
    step: int
    tokens: int
    seconds: float | None  # the training steps' own time through that step


def first_reaching(r: MethodResult, target: float) -> Reached | None:
    """The first evaluation while training at or below `target`; None if none is (the resolution is eval_every)."""
    step = next((s for s, loss in r.val_curve if s > 0 and loss <= target), None)
    return None if step is None else Reached(step, r.tokens_at(step), r.seconds_at.get(step))


@dataclass(frozen=True)
class ToTarget:
    method: str
    reached: Reached | None
    tokens_speedup: float | None  # the yardstick's tokens ÷ this method's: > 1 is faster
    time_speedup: float | None


def to_target(comparison: Comparison) -> tuple[float | None, list[ToTarget]]:
    """AdamW's last validation loss while training (the same measurement as every curve) and, for each method,
    when it got there and how much sooner than AdamW; (None, []) without a finished AdamW."""
    yardstick = comparison.by_method(YARDSTICK)
    if yardstick is None or yardstick.status != "FINISHED" or not yardstick.val_curve:
        return None, []
    target = yardstick.val_curve[-1][1]
    base = first_reaching(yardstick, target)
    rows = []
    for r in comparison.results:
        reached = first_reaching(r, target)
        tokens = base.tokens / reached.tokens if reached and base and reached.tokens else None
        time = base.seconds / reached.seconds if reached and base and base.seconds and reached.seconds else None
        rows.append(ToTarget(r.method, reached, tokens, time))
    return target, rows
