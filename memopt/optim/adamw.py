"""The baseline: torch's AdamW on its foreach path (on CPU torch otherwise takes its
single-tensor loop, about twice as slow). `fused=True` takes torch's fused kernel
instead: one pass over memory, about 6-10x faster per optimizer step on CPU with
torch 2.13 (BENCHMARKS.md); the default stays the foreach path the project's
targets are stated against."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from memopt.optim.checks import check_bool
from memopt.optim.config import AdamConfig
from memopt.optim.registry import MethodSpec, register


@dataclass(frozen=True, kw_only=True)
class AdamWConfig(AdamConfig):
    fused: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bool("fused", self.fused)


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def build_adamw(model: nn.Module, config: AdamWConfig) -> torch.optim.AdamW:
    c = config
    return torch.optim.AdamW(trainable(model), lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay,
                             foreach=not c.fused, fused=c.fused)


def adamw_state_bytes(model: nn.Module, config: AdamWConfig) -> int:
    # exp_avg and exp_avg_sq per element, plus one fp32 step scalar per tensor.
    params = trainable(model)
    return sum(2 * p.numel() * p.element_size() for p in params) + 4 * len(params)


ADAMW = register(
    MethodSpec(
        name="adamw",
        config=AdamWConfig,
        builder=build_adamw,
        state_bytes=adamw_state_bytes,
        summary="torch.optim.AdamW (foreach): the yardstick for every ratio",
        paper="arXiv 1711.05101",
    )
)
