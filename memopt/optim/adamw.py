"""The baseline: torch's AdamW on its foreach path (on CPU torch otherwise takes its
single-tensor loop, about twice as slow)."""
from __future__ import annotations

import torch
from torch import nn

from memopt.optim.registry import MethodSpec, register


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def build_adamw(model: nn.Module, lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(trainable(model), lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, foreach=True)


def adamw_state_bytes(model: nn.Module, **_: object) -> int:
    # exp_avg and exp_avg_sq per element, plus one fp32 step scalar per tensor.
    params = trainable(model)
    return sum(2 * p.numel() * p.element_size() for p in params) + 4 * len(params)


ADAMW = register(
    MethodSpec(
        name="adamw",
        builder=build_adamw,
        state_bytes=adamw_state_bytes,
        defaults={"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
        summary="torch.optim.AdamW (foreach): the yardstick for every ratio",
        paper="arXiv 1711.05101",
    )
)
