"""GaLore with 8-bit moments (registry name `galore-8bit`; the paper's "8-bit GaLore", transformers'
`galore_adamw_8bit`): memopt's GaLoreAdamW (projection, refresh schedule, options) with its moments held
and updated by bitsandbytes, block-wise 8-bit codes and bitsandbytes' kernels (`optimizer_update_8bit_blockwise`,
32-bit `optimizer_update_32bit` for tensors under `min_8bit_size`), as galore-torch's `GaLoreAdamW8bit` does.

Not galore-torch's class itself: on torch 2.13 and bitsandbytes 0.50 it calls `torch.cuda.synchronize()`
after every tensor (no CPU run at all), keeps a GaLoreProjector object in the state (a checkpoint that
`torch.load(weights_only=True)` refuses), swaps `p.data` for the low-rank gradient during the step, and
passes bitsandbytes' former positional arguments, which 0.50 reads as max_unorm=100 and skip_zeros=True.
Its update is reproduced (galore_8bit_test.py compares the two with the synchronize call stubbed out):
- Adam is bitsandbytes' (torch's formula: eps added after the bias correction; galore-torch's 8-bit class
  default eps 1e-8, not the 32-bit class's 1e-6), on the projected gradient; the update it writes into a
  zero low-rank tensor is projected back, scaled and added to W; decoupled weight decay at full rank after.
- full-size tensors (embeddings, lm_head, norms) get bitsandbytes' AdamW, its weight decay before the update.
- the step counter read before it moves drives the refreshes (steps 0, T, 2T, ...), as in memopt's GaLore.

State per tensor whose moment has k elements (k = the low-rank shape of a projected weight, numel otherwise):
  k >= min_8bit_size: 2k (uint8 codes) + 8 ceil(k / 256) (fp32 absmax per block); smaller: 8k (fp32)
  + the projector(s) of a projected weight (GaLore's), + the two 256-entry fp32 quantization maps (2048).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn

from memopt.optim.checks import check_range
from memopt.optim.galore import GaLoreAdamW, GaLoreConfig, check_projected_shapes, galore_builder, projected_elements
from memopt.optim.lowbit import BNB_BLOCK, BNB_MAP_ENTRIES
from memopt.optim.registry import MethodSpec, register
from memopt.optim.targets import split_params

MOMENT_KEYS = ("state1", "state2", "absmax1", "absmax2")  # bitsandbytes' names


@dataclass(frozen=True, kw_only=True)
class GaLore8bitConfig(GaLoreConfig):
    eps: float = 1e-8  # galore-torch's GaLoreAdamW8bit (bitsandbytes')
    min_8bit_size: int = 4096  # bitsandbytes': smaller moments stay 32-bit

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("min_8bit_size", self.min_8bit_size, 1, integer=True)


class GaLoreAdamW8bit(GaLoreAdamW):
    def __init__(self, params: Iterable[Any], lr: float = 1e-3, *args: Any,
                 min_8bit_size: int = GaLore8bitConfig.min_8bit_size, **kwargs: Any) -> None:
        from bitsandbytes.functional import create_dynamic_map  # imported here: bitsandbytes costs seconds

        check_range("min_8bit_size", min_8bit_size, 1, integer=True)
        super().__init__(params, lr, *args, **kwargs)
        self.min_8bit_size = min_8bit_size
        self.qmaps = (create_dynamic_map(signed=True), create_dynamic_map(signed=False))  # m, then v

    # --- the moments: bitsandbytes' layout ------------------------------------------------------
    @staticmethod
    def _zero_moments(state: dict[str, Any]) -> None:
        for key in MOMENT_KEYS:
            if key in state:
                state[key].zero_()  # zero codes under a zero absmax dequantize to 0

    @staticmethod
    def _moments_fit(state: dict[str, Any], grad: torch.Tensor) -> bool:
        return "state1" in state and state["state1"].shape == grad.shape

    def _new_moments(self, state: dict[str, Any], grad: torch.Tensor) -> None:
        for key in MOMENT_KEYS:
            state.pop(key, None)
        k = grad.numel()
        quantized = k >= self.min_8bit_size
        for key in ("state1", "state2"):
            state[key] = torch.zeros_like(grad, dtype=torch.uint8 if quantized else torch.float32,
                                          memory_format=torch.contiguous_format)
        if quantized:
            for key in ("absmax1", "absmax2"):
                state[key] = torch.zeros(math.ceil(k / BNB_BLOCK), dtype=torch.float32, device=grad.device)

    def _adam(self, group: dict[str, Any], state: dict[str, Any], grad: torch.Tensor, target: torch.Tensor,
              weight_decay: float) -> None:
        """bitsandbytes' Adam step of `target` (the weight, or a zero low-rank tensor) with `grad`."""
        from bitsandbytes import functional as F

        beta1, beta2 = group["betas"]
        step, lr, eps, grad = state["moment_step"], group["lr"], group["eps"], grad.contiguous()
        if state["state1"].dtype == torch.uint8:
            if self.qmaps[0].device != grad.device:
                self.qmaps = tuple(q.to(grad.device) for q in self.qmaps)
            F.optimizer_update_8bit_blockwise(
                "adam", grad, target, state["state1"], state["state2"], beta1, beta2, 0.0, 0.0, eps, step, lr,
                self.qmaps[0], self.qmaps[1], state["absmax1"], state["absmax2"], weight_decay)
        else:
            F.optimizer_update_32bit("adam", grad, target, state["state1"], beta1, eps, step, lr, state["state2"],
                                     beta2, weight_decay=weight_decay)

    def _group_step(self, group: dict[str, Any], only: list[torch.Tensor] | None = None) -> None:
        projected = []
        for p in group["params"] if only is None else only:
            if p.grad is None:
                continue
            state, grad, side = self._prepare(p, group)
            if side is None:
                self._adam(group, state, grad, p, group["weight_decay"])
                continue
            update = torch.zeros_like(grad, memory_format=torch.contiguous_format)  # bitsandbytes writes -lr·m̂/(√v̂+ε) here
            self._adam(group, state, grad, update, 0.0)
            self._update_projected(p, state, side, update, grad, 1.0, group)  # W += scale · project_back(update)
            projected.append(p)
        if projected and group["weight_decay"] > 0.0:
            torch._foreach_add_(projected, projected, alpha=-group["lr"] * group["weight_decay"])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # torch casts a floating-point parameter's state to the parameter's dtype: the codes and absmax keep theirs
        saved = state_dict["state"]
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        for i, p in zip(ids, (p for g in self.param_groups for p in g["params"])):
            for key in MOMENT_KEYS:
                if key in saved.get(i, {}):
                    self.state[p][key] = saved[i][key].to(p.device)


def galore_8bit_state_bytes(model: nn.Module, config: GaLore8bitConfig) -> int:
    def moments(k: int) -> int:
        return 8 * k if k < config.min_8bit_size else 2 * k + 8 * math.ceil(k / BNB_BLOCK)

    projected, plain = split_params(model)
    check_projected_shapes(config.rank, [tuple(p.shape) for p in projected])
    total = 2 * BNB_MAP_ENTRIES * 4 + sum(moments(p.numel()) for p in plain)
    for p in projected:
        moment, projector = projected_elements(p.shape[0], p.shape[1], config.rank, config.proj_type)
        total += moments(moment) + projector * p.element_size()
    return total


GALORE_8BIT = register(
    MethodSpec(
        name="galore-8bit",
        config=GaLore8bitConfig,
        builder=galore_builder(GaLoreAdamW8bit),
        state_bytes=galore_8bit_state_bytes,
        summary="GaLore with bitsandbytes' block-wise 8-bit moments (galore-torch's GaLoreAdamW8bit update)",
        paper="arXiv 2403.03507",
    )
)
