"""The baseline: torch's AdamW on its foreach path (on CPU torch otherwise takes its
single-tensor loop, about twice as slow). `fused=True` takes torch's fused kernel
instead: one pass over memory, about 6-10x faster per optimizer step on CPU with
torch 2.13 (BENCHMARKS.md); the default stays the foreach path the project's
targets are stated against."""
from __future__ import annotations

import torch
from torch import nn

from memopt.optim.checks import check
from memopt.optim.registry import MethodSpec, register


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def build_adamw(model: nn.Module, lr: float, betas: tuple[float, float], eps: float, weight_decay: float,
                fused: bool) -> torch.optim.AdamW:
    check(isinstance(fused, bool), "fused", fused, "True or False")
    return torch.optim.AdamW(trainable(model), lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                             foreach=not fused, fused=fused)


def adamw_state_bytes(model: nn.Module, **_: object) -> int:
    # exp_avg and exp_avg_sq per element, plus one fp32 step scalar per tensor.
    params = trainable(model)
    return sum(2 * p.numel() * p.element_size() for p in params) + 4 * len(params)


ADAMW = register(
    MethodSpec(
        name="adamw",
        builder=build_adamw,
        state_bytes=adamw_state_bytes,
        defaults={"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "fused": False},
        summary="torch.optim.AdamW (foreach): the yardstick for every ratio",
        paper="arXiv 1711.05101",
    )
)
