"""Muon (Jordan et al. 2024; Liu et al., arXiv 2502.16982): torch.optim.Muon on the hidden 2-D weights
(the attention and MLP linears, memopt.optim.targets), torch.optim.AdamW (foreach) on the embeddings,
lm_head, norms and biases, as torch's documentation prescribes (Muon is for hidden 2-D weights only).

The learning-rate adjustment is the one torch's documentation gives for sharing AdamW's hyperparameters,
`adjust_lr_fn="match_rms_adamw"` (Moonshot's 0.2·sqrt(max(A, B)) scaling, which makes Muon's update RMS
match AdamW's so that "Muon can directly reuse the learning rate and weight decay tuned for AdamW"): so
both parts take one lr and one weight_decay, AdamW's (the registry's adamw defaults: lr 1e-3, decay 0).
`adjust_lr_fn="original"` (Keller Jordan's sqrt(max(1, A/B))) wants a Muon-sized lr (0.02), which would
then reach the AdamW part too. momentum, nesterov and ns_steps are torch.optim.Muon's defaults.

State: one momentum buffer per Muon weight (m·n) plus AdamW's two moments and a 0-d fp32 step per
other tensor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from memopt.optim.checks import check_bool, check_choice, check_range
from memopt.optim.config import AdamConfig
from memopt.optim.registry import MethodSpec, register
from memopt.optim.targets import split_params

ADJUST_LR_FNS = ("match_rms_adamw", "original")


@dataclass(frozen=True, kw_only=True)
class MuonConfig(AdamConfig):
    momentum: float = 0.95
    nesterov: bool = True
    ns_steps: int = 5
    adjust_lr_fn: str = "match_rms_adamw"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("momentum", self.momentum, 0.0, 1.0)
        check_bool("nesterov", self.nesterov)
        check_range("ns_steps", self.ns_steps, 1, 100, integer=True)  # torch refuses 100 and more
        check_choice("adjust_lr_fn", self.adjust_lr_fn, ADJUST_LR_FNS)


class MuonWithAdamW(torch.optim.Optimizer):
    """torch.optim.Muon and torch.optim.AdamW as one optimizer for the engine (torch has no container for
    two optimizers: torchtitan's OptimizersContainer is the same idea). `param_groups` are the two
    optimizers' own group dicts, so an LR scheduler's writes reach both; `state_dict` holds both."""

    def __init__(self, hidden: list[nn.Parameter], other: list[nn.Parameter], config: MuonConfig) -> None:
        c = config
        self.muon = torch.optim.Muon(hidden, lr=c.lr, weight_decay=c.weight_decay, momentum=c.momentum,
                                     nesterov=c.nesterov, ns_steps=c.ns_steps, adjust_lr_fn=c.adjust_lr_fn)
        self.adamw = torch.optim.AdamW(other, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay,
                                       foreach=True)
        super().__init__(self._inner_groups(), {})

    def _inner_groups(self) -> list[dict[str, Any]]:
        return [*self.muon.param_groups, *self.adamw.param_groups]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self.param_groups = self._inner_groups()  # loading made new group dicts: share them again


def build_muon(model: nn.Module, config: MuonConfig) -> MuonWithAdamW:
    hidden, other = split_params(model)
    return MuonWithAdamW(hidden, other, config)


def muon_state_bytes(model: nn.Module, config: MuonConfig) -> int:
    hidden, other = split_params(model)
    return sum(p.numel() * p.element_size() for p in hidden) + sum(2 * p.numel() * p.element_size() + 4 for p in other)


MUON = register(
    MethodSpec(
        name="muon",
        config=MuonConfig,
        builder=build_muon,
        state_bytes=muon_state_bytes,
        summary="torch.optim.Muon (Newton-Schulz orthogonalized momentum) on attention/MLP weights, AdamW on the rest",
        paper="arXiv 2502.16982",
    )
)
