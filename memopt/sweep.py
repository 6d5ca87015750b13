"""The learning-rate sweep and the seed runs of one method: what each run trains with, and which trial wins.

Every method is swept the same way, the baseline included: one short trial per learning rate of its
grid (`sweep_steps` steps, the same schedule shape as the final run), each its own training process
and MLflow run; the trial with the lowest validation loss at its last step wins; a trial that failed
(a NaN loss at a large lr) scores as infinitely bad. The winner's lr then trains the method's final
configuration once per seed, for the whole budget. A method given an lr (--lr, METHOD.lr in
method_args) or a comparison with --sweep_steps 0 is not swept (CompareConfig.lr_source).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from memopt import optim
from memopt.config import CompareConfig, TrainingOptions
from memopt.methods import recipe


@dataclass(frozen=True)
class Trial:
    lr: float
    val_loss: float | None  # at the trial's last step; None when it did not finish
    reason: str = ""  # why it did not finish


def best_trial(trials: list[Trial]) -> Trial | None:
    """The trial with the lowest finite validation loss (the first in grid order on a tie); None if none."""
    scored = [t for t in trials if t.val_loss is not None and math.isfinite(t.val_loss)]
    return min(scored, key=lambda t: t.val_loss) if scored else None


def grid_edge(grid: list[float], lr: float) -> str:
    """"lowest" or "highest" when `lr` is that end of a grid of several values (the optimum may lie beyond)."""
    if len(grid) < 2:
        return ""
    return "lowest" if lr == min(grid) else "highest" if lr == max(grid) else ""


def _options(cfg: CompareConfig, **changes: object) -> TrainingOptions:
    return TrainingOptions.model_validate({**cfg.training.model_dump(), **changes})


def trial_options(cfg: CompareConfig, lr: float) -> TrainingOptions:
    """A trial: the comparison's options for `sweep_steps` steps at `lr`, the first seed, the last model."""
    warmup = cfg.training.warmup_steps
    return _options(cfg, max_steps=cfg.sweep_steps, lr=lr, seed=cfg.final_seeds[0], metric_for_best_model="",
                    warmup_steps=None if warmup is None else min(warmup, cfg.sweep_steps))


def seed_options(cfg: CompareConfig, seed: int, lr: float | None) -> TrainingOptions:
    """A seed run: the comparison's options with `seed`, at `lr` (None: the method's own, or --lr)."""
    return _options(cfg, seed=seed, **({"lr": lr} if lr is not None else {}))


def resolved_lr(cfg: CompareConfig, method: str) -> float:
    """The lr `method` trains at when it is not swept: --lr, else its method_args lr, else its own default."""
    if cfg.training.lr is not None:
        return cfg.training.lr
    return float(optim.hyperparameters(recipe(method).optimizer, **cfg.method_hyperparameters(method))["lr"])


def trial_dir(method_dir: Path, lr: float) -> Path:
    return method_dir / f"trial-lr{lr:g}"


def seed_dir(method_dir: Path, seed: int) -> Path:
    return method_dir / f"seed-{seed}"
