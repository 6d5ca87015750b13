"""The baseline: torch's AdamW on its fused kernel wherever torch has one (CPU and CUDA among
them; memopt.optim.kernels), the yardstick for every ratio. One pass over memory per step: on
this CPU several times faster than the foreach path (BENCHMARKS.md). `fused=False`, or the
method `adamw-foreach`, takes the foreach path instead (the yardstick before issue 15; on CPU
torch's default otherwise is its single-tensor loop, about twice as slow again)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from memopt.optim.checks import check_bool
from memopt.optim.config import AdamConfig
from memopt.optim.kernels import torch_adamw_kernel
from memopt.optim.registry import MethodSpec, register


@dataclass(frozen=True, kw_only=True)
class AdamWConfig(AdamConfig):
    fused: bool = True  # torch's fused kernel where it has one for the params; False: foreach

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bool("fused", self.fused)


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def torch_adamw(params: list[nn.Parameter], config: AdamConfig, fused: bool = True) -> torch.optim.AdamW:
    """torch.optim.AdamW with a config's Adam block, on the kernel `torch_adamw_kernel` picks."""
    c = config
    return torch.optim.AdamW(params, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay,
                             **torch_adamw_kernel(params, fused))


def build_adamw(model: nn.Module, config: AdamWConfig) -> torch.optim.AdamW:
    return torch_adamw(trainable(model), config, fused=config.fused)


def build_adamw_foreach(model: nn.Module, config: AdamConfig) -> torch.optim.AdamW:
    return torch_adamw(trainable(model), config, fused=False)


def adamw_state_bytes(model: nn.Module, config: AdamConfig) -> int:
    # exp_avg and exp_avg_sq per element, plus one fp32 step scalar per tensor (either kernel).
    params = trainable(model)
    return sum(2 * p.numel() * p.element_size() for p in params) + 4 * len(params)


ADAMW = register(
    MethodSpec(
        name="adamw",
        config=AdamWConfig,
        builder=build_adamw,
        state_bytes=adamw_state_bytes,
        summary="torch.optim.AdamW on torch's fused kernel: the yardstick for every ratio",
        paper="arXiv 1711.05101",
    )
)
ADAMW_FOREACH = register(
    MethodSpec(
        name="adamw-foreach",
        config=AdamConfig,
        builder=build_adamw_foreach,
        state_bytes=adamw_state_bytes,
        summary="torch.optim.AdamW on its foreach path (the same formula as adamw, several times slower per step on CPU)",
        paper="arXiv 1711.05101",
    )
)
