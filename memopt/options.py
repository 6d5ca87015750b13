"""What the training options shared by every method mean, and the engine's helpers for them: batch geometry,
warm-up, weight dtype, clipping and the best model. The options themselves are declared, with their checks,
in `memopt.config.TrainingOptions`.

Batch geometry. One optimizer step consumes `total_batch_size` sequences:

    total_batch_size = batch_size × world_size × accumulation

`batch_size` is what one process (one GPU) runs forward at once, `world_size` the
number of DDP processes (`nproc_per_node × nnodes`), and the accumulation is
derived; it must be a whole number. 0 means "no accumulation" (total =
batch_size × world_size). The `adamw-amp` recipe's own micro-batching splits each
per-process batch further (4, 2 or 1 chunks that divide it): a step is then
accumulation × chunks backward passes, every loss scaled by their inverse, so the
step's gradient is the mean over the whole `total_batch_size` either way.

Best model. `metric_for_best_model` is a metric the training process computes
while it trains: `val_loss` or `val_perplexity` (lower is better; they rank the
evaluations identically). The model at the best evaluation (every `eval_every`
steps and the last step) is the one exported as the final model and logged to
MLflow. `answer_accuracy` is not offered: it needs generation and is measured
once, by the evaluate task, on that final model.
"""
from __future__ import annotations

from typing import Iterable

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
BEST_METRICS = {"val_loss": False, "val_perplexity": False}  # name -> greater is better
NOT_DURING_TRAINING = {"answer_accuracy", "final_val_loss", "final_val_perplexity"}


def warmup(warmup_steps: int | None, warmup_ratio: float, steps: int) -> int:
    return int(warmup_ratio * steps) if warmup_steps is None else min(warmup_steps, steps)


def clip_(params: Iterable[torch.Tensor], max_norm: float, total_norm: torch.Tensor) -> None:
    """Scale the gradients so their total norm is at most `max_norm`, reusing the norm already computed."""
    with_grad = [p for p in params if p.grad is not None]
    if max_norm > 0 and with_grad:
        torch.nn.utils.clip_grads_with_norm_(with_grad, max_norm, total_norm)


class BestTracker:
    """Which evaluation was best so far; its state goes into the checkpoint so a resume keeps it."""

    def __init__(self, metric: str):
        self.metric = metric
        self.greater_is_better = BEST_METRICS.get(metric, False)
        self.step: int | None = None
        self.value: float | None = None

    def improved(self, values: dict[str, float], step: int) -> bool:
        if not self.metric:
            return False
        value = values[self.metric]
        better = self.value is None or (value > self.value if self.greater_is_better else value < self.value)
        if better:
            self.step, self.value = step, value
        return better

    def state_dict(self) -> dict[str, object]:
        return {"step": self.step, "value": self.value}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.step, self.value = state["step"], state["value"]  # type: ignore[assignment]
