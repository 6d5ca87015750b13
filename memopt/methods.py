"""What `--methods` accepts: every optimizer in the registry, plus training recipes built on one.

A recipe changes how the engine trains (autocast, accumulation, checkpointing),
not the update rule, so it lives here and not in `memopt.optim`.
"""
from __future__ import annotations

from dataclasses import dataclass

from memopt import optim


@dataclass(frozen=True)
class Recipe:
    optimizer: str  # a registry name
    mixed_precision: bool = False  # autocast: bf16 on CPU and on CUDA that has it, else fp16 + GradScaler
    gradient_checkpointing: bool = False
    max_grad_accum: int = 1  # micro-batches per step: the largest of 4, 2, 1 that divides the batch


RECIPES: dict[str, Recipe] = {
    # The seeds' "modified" recipe: same optimizer and effective batch as adamw, less activation memory.
    "adamw-amp": Recipe("adamw", mixed_precision=True, gradient_checkpointing=True, max_grad_accum=4),
}


def pipeline_methods() -> list[str]:
    return [*optim.METHODS, *RECIPES]


def recipe(name: str) -> Recipe:
    if name in RECIPES:
        return RECIPES[name]
    if name in optim.METHODS:
        return Recipe(name)
    raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(pipeline_methods())}")


def grad_accum_steps(r: Recipe, batch_size: int) -> int:
    return next(k for k in (4, 2, 1) if k <= r.max_grad_accum and batch_size % k == 0)


# Facts of the run that some optimizers take as hyperparameters: GoLore switches to random
# projectors at a fraction of `total_steps`; layer-wise GaLore steps inside the backward of the
# last of `accumulation_steps` micro-batches; an optimizer's own random choices (BlockLLM's probes,
# APOLLO's projectors, ...) follow the run's `seed`, so seed runs differ in every random choice.
# The engine supplies them; a user's own value wins.
RUN_FACTS = ("total_steps", "accumulation_steps", "seed")


def run_hyperparameters(optimizer: str, total_steps: int, accumulation_steps: int, seed: int = 0) -> dict[str, int]:
    facts = {"total_steps": total_steps, "accumulation_steps": accumulation_steps, "seed": seed}
    return {k: v for k, v in facts.items() if k in optim.spec(optimizer).defaults}
