"""Training options shared by every method: batch geometry, warm-up, weight dtype, clipping, checkpoints kept,
and the best model.

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

import math
from typing import Iterable

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
BEST_METRICS = {"val_loss": False, "val_perplexity": False}  # name -> greater is better
NOT_DURING_TRAINING = {"answer_accuracy", "final_val_loss", "perplexity"}


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_training_options(
    *,
    batch_size: int,
    total_batch_size: int = 0,
    world_size: int = 1,
    warmup_steps: int | None = None,
    max_steps: int = 0,
    dtype: str = "fp32",
    grad_clip: float = 0.0,
    save_total_limit: int = 1,
    metric_for_best_model: str = "",
) -> None:
    """Raise ValueError('--NAME: got VALUE; ...') for the first bad option."""
    if not _int(total_batch_size) or total_batch_size < 0:
        raise ValueError(f"--total_batch_size: got {total_batch_size!r}; must be an integer >= 0 (0: batch_size × world size)")
    if total_batch_size:
        per_step = batch_size * world_size
        if total_batch_size % per_step:
            raise ValueError(
                f"--total_batch_size: got {total_batch_size}; must be a multiple of --batch_size × world size = "
                f"{batch_size} × {world_size} = {per_step} (the gradient accumulation steps are derived from it)"
            )
    if warmup_steps is not None:
        if not _int(warmup_steps) or warmup_steps < 0:
            raise ValueError(f"--warmup_steps: got {warmup_steps!r}; must be an integer >= 0 (empty: 10% of the steps)")
        if max_steps and warmup_steps > max_steps:
            raise ValueError(f"--warmup_steps: got {warmup_steps}; must be at most --max_steps {max_steps}")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype: got {dtype!r}; must be one of {', '.join(DTYPES)} (the weights' dtype)")
    if isinstance(grad_clip, bool) or not isinstance(grad_clip, float | int) or not (0 <= grad_clip < math.inf):
        raise ValueError(f"--grad_clip: got {grad_clip!r}; must be a number >= 0 (0: no clipping)")
    if not _int(save_total_limit) or save_total_limit < 1:
        raise ValueError(f"--save_total_limit: got {save_total_limit!r}; must be an integer >= 1 (checkpoints kept)")
    if metric_for_best_model and metric_for_best_model not in BEST_METRICS:
        why = " (it is measured once, on the final model, by the evaluate task)" if metric_for_best_model in NOT_DURING_TRAINING else ""
        raise ValueError(
            f"--metric_for_best_model: got {metric_for_best_model!r}{why}; must be empty (the last model) or one of "
            f"{', '.join(BEST_METRICS)}"
        )


def accumulation_steps(total_batch_size: int, batch_size: int, world_size: int) -> int:
    if not total_batch_size:
        return 1
    check_training_options(batch_size=batch_size, total_batch_size=total_batch_size, world_size=world_size)
    return total_batch_size // (batch_size * world_size)


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
