"""AdaLomo (Lv et al., arXiv 2310.10195): the authors' `lomo_optim.AdaLomo` (package lomo-optim), the
`adalomo` of transformers' Trainer. Adafactor-style factored second moments (one row and one column mean
square per matrix, the full vector for 1-D tensors), no first moment, the update normalized by its RMS and
scaled by the weight's RMS, all fused into backward: each tensor is updated as soon as its gradient exists
and the gradient freed, so gradients never exist for the whole model.

The update runs in backward, so the training loop calls `optimizer.backward(loss)` (AdaLomo's
`fused_backward` with the scheduler's lr: it scales the loss by `loss_scale`, counts the step, and updates
the last tensor, whose hook fires before its gradient lands) in place of loss.backward(): the MethodSpec
says so (owns_backward) and memopt/trainer.py reads it. `step(closure)` updates nothing. With
`clip_grad_norm`, backward runs twice (the authors' two-pass clipping: norms first, then the update).
What cannot work with an update inside backward is refused before a comparison starts (memopt/preflight.py):
gradient accumulation, DDP, the engine's own grad_clip.

Defaults are the class's (lr 1e-3, loss_scale 2^10, eps (1e-30, 1e-3), clip_threshold 1, decay_rate -0.8).
Two things the subclass adds: lomo-optim 0.1.1 allocates its states with `.cuda()`, which a CPU-only torch
refuses, so they are allocated on the model's device instead; and it keeps those states outside
`optimizer.state`, so `state_dict` saves them (and the step count), for a bit-for-bit resume.

State: fp32, per tensor of the model (trainable or not, as the class allocates): a m x n matrix m + n
(row and column), a vector its length; times 4 bytes. With clip_grad_norm, also the last norm pass's
per-tensor norms and the clip coefficient (one fp32 per trainable tensor, plus one).
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from memopt.optim.checks import check, check_range
from memopt.optim.config import OptimizerConfig
from memopt.optim.registry import MethodSpec, register

STATE_DICTS = ("exp_avg_sq", "exp_avg_sq_row", "exp_avg_sq_col")  # AdaLomo's attributes, by parameter name


@dataclass(frozen=True, kw_only=True)
class AdaLomoConfig(OptimizerConfig):
    lr: float = 1e-3
    loss_scale: float = 2.0**10
    eps: tuple[float, float] = (1e-30, 1e-3)  # squared-gradient floor; floor of the weight RMS that scales lr
    clip_threshold: float = 1.0  # the update's RMS is capped at this
    decay_rate: float = -0.8  # second moment's beta2 at step t: 1 - t^decay_rate
    clip_grad_norm: float | None = None
    clip_grad_value: float | None = None
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("lr", self.lr, 0.0, lo_open=True)
        check_range("loss_scale", self.loss_scale, 0.0, lo_open=True)
        check(isinstance(self.eps, (tuple, list)) and len(self.eps) == 2, "eps", self.eps, "a pair (eps1, eps2)")
        for i, e in enumerate(self.eps):
            check_range(f"eps[{i}]", e, 0.0)
        self._normalize("eps", tuple(self.eps))
        check_range("clip_threshold", self.clip_threshold, 0.0, lo_open=True)
        check_range("decay_rate", self.decay_rate, -1.0, 0.0, hi_open=True)
        for name in ("clip_grad_norm", "clip_grad_value"):
            if getattr(self, name) is not None:
                check_range(name, getattr(self, name), 0.0, lo_open=True)
        check_range("weight_decay", self.weight_decay, 0.0)


@contextlib.contextmanager
def cuda_calls_go_to(device: torch.device) -> Iterator[None]:
    """`Tensor.cuda()` moves to `device` instead, for as long as lomo-optim's constructor runs (one thread)."""
    cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda tensor, *args, **kwargs: tensor.to(device)
    try:
        yield
    finally:
        torch.Tensor.cuda = cuda


@functools.cache
def adalomo_class() -> type[torch.optim.Optimizer]:
    """lomo_optim.AdaLomo for the engine (imported on first use: lomo-optim imports transformers, which
    memopt.optim does not)."""
    from lomo_optim import AdaLomo

    class EngineAdaLomo(AdaLomo):
        def __init__(self, model: nn.Module, **kwargs: Any) -> None:
            with cuda_calls_go_to(next(model.parameters()).device):
                super().__init__(model, **kwargs)

        def backward(self, loss: torch.Tensor) -> None:
            """The step: backward with the update fused in, at the param group's (the scheduler's) lr."""
            lr = float(self.param_groups[0]["lr"])
            if self.clip_grad_norm is not None:
                self.grad_norm(loss)
            self.fused_backward(loss, lr)

        @torch.no_grad()
        def step(self, closure: Callable[[], Any] | None = None) -> Any:
            """Nothing to update (backward did): runs the closure."""
            if closure is None:
                return None
            with torch.enable_grad():
                return closure()

        def state_dict(self) -> dict[str, Any]:
            sd = super().state_dict()
            sd["adalomo"] = {"step_num": self.step_num, **{k: dict(getattr(self, k)) for k in STATE_DICTS}}
            return sd

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            sd = dict(state_dict)
            saved = sd.pop("adalomo")
            super().load_state_dict(sd)
            self.step_num = int(saved["step_num"])
            with torch.no_grad():
                for key in STATE_DICTS:
                    mine = getattr(self, key)
                    check(saved[key].keys() == mine.keys(), key, sorted(saved[key]), f"the model's {sorted(mine)}")
                    for name, value in saved[key].items():
                        mine[name].copy_(value)

    return EngineAdaLomo


def build_adalomo(model: nn.Module, config: AdaLomoConfig) -> torch.optim.Optimizer:
    return adalomo_class()(model, **config.as_dict())


def adalomo_state_bytes(model: nn.Module, config: AdaLomoConfig) -> int:
    total = sum(4 * (p.shape[0] if p.dim() == 1 else p.shape[0] + p.shape[1]) for _, p in model.named_parameters())
    if config.clip_grad_norm is not None:  # the last norm pass's per-tensor norms (stacked) and clip coefficient
        total += 4 * (sum(p.requires_grad for p in model.parameters()) + 1)
    return total


ADALOMO = register(
    MethodSpec(
        name="adalomo",
        config=AdaLomoConfig,
        builder=build_adalomo,
        state_bytes=adalomo_state_bytes,
        summary="AdaLomo: factored second moments, update fused into backward (no gradients kept, no first moment)",
        paper="arXiv 2310.10195",
        steps_in_backward=True,
        owns_backward=True,
    )
)
