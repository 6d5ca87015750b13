"""Fira (arXiv 2410.01623; authors' package `fira`, class `FiraAdamW`): GaLore-Adam in the
rank-r subspace plus the gradient's residual outside it, scaled like Adam would scale it.

Per projected m x n weight, step t (R = projected gradient, N = m/(sqrt(v)+eps) in the
subspace, both r-wide along the projected side; scale = the authors' `alpha`):
  1. GaLore's subspace update: scale * project_back(N)         (GaLoreAdamW, reused)
  2. residual S = G - scale * project_back(R), multiplied per channel by
     phi = ||N||/(||R|| + 1e-8), the norms taken along the rank axis: one factor per row
     with a right projector (R m x r), per column with a left one (R r x n). The authors
     pick the axis from R's shape (dim 0 if R has fewer rows than columns); that is the
     same axis except when rank equals the projected side's length, where theirs fails
     to broadcast. proj_type `full` (R r x r) has no such factor: rejected, as in effect
     in the authors' code (it raises there at the first step);
  3. norm-growth limiter (authors' gamma 1.01): if ||S_t|| > 1.01 * ||S_{t-1}|| (the
     kept, already limited norm), S_t is scaled down to exactly 1.01 * ||S_{t-1}||;
  4. W -= step_size * (1. + S_t), then decoupled weight decay as GaLore.
Everything else (refresh schedule, Adam form, plain groups, options) is GaLoreAdamW's.

Authors' code vs paper: their residual subtracts the *scaled* back-projection
(project_back multiplies by alpha, and they reuse it for P P^T G), so with the
scripts' alpha 0.25 the residual still holds 3/4 of the in-subspace gradient. That
is the default here (differential test in fira_test.py); `exact_residual=True`
gives the paper's G - P P^T G.

State per projected weight: GaLore's (two moments in the projected shape + the
projector) plus the limiter's last norm, a 0-d tensor of the gradient's dtype
(one element). Plain tensors: 2 * numel, as AdamW.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn

from memopt.optim.checks import check_bool, check_choice
from memopt.optim.galore import GaLoreAdamW, GaLoreConfig, galore_builder, galore_state_bytes
from memopt.optim.registry import MethodSpec, register
from memopt.optim.targets import split_params

FIRA_PROJ_TYPES = ("std", "reverse_std", "left", "right")
GROWTH_LIMIT = 1.01  # authors' gamma: the residual's norm may grow at most 1.01x per step


@dataclass(frozen=True, kw_only=True)
class FiraConfig(GaLoreConfig):
    """GaLore's hyperparameters (the authors' llama_60m script uses GaLore's values) plus the residual's form."""

    exact_residual: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        # `full` gives an r x r projected gradient: no per-channel factor fits an m x n residual
        check_choice("proj_type", self.proj_type, FIRA_PROJ_TYPES)
        check_bool("exact_residual", self.exact_residual)


class FiraAdamW(GaLoreAdamW):
    def __init__(self, params: Iterable[Any], lr: float = 1e-3, *args: Any,
                 exact_residual: bool = FiraConfig.exact_residual, **kwargs: Any) -> None:
        check_bool("exact_residual", exact_residual)
        super().__init__(params, lr, *args, **kwargs)
        for group in self.param_groups:
            if group.get("rank") is not None:
                check_choice("proj_type", group["proj_type"], FIRA_PROJ_TYPES)  # as FiraConfig: no `full`
        # A Fira-only default: filled into the groups made so far and, through self.defaults,
        # into any group added later.
        self.defaults["exact_residual"] = exact_residual
        for group in self.param_groups:
            group.setdefault("exact_residual", exact_residual)
            check_bool("exact_residual", group["exact_residual"])

    def _update_projected(self, p: torch.Tensor, state: dict[str, Any], side: str, direction: torch.Tensor,
                          low_grad: torch.Tensor, alpha: float, group: dict[str, Any]) -> None:
        # The authors' W += alpha*scale*PB(N) + alpha*phi*S/f (PB: project_back, N the direction, S the residual,
        # f the limiter's divisor) without forming S: with c = alpha/f, S = G - s*PB(R) and s = scale (or 1 for
        # exact_residual), the low-rank parts join in one GEMM, W += PB(alpha*scale*N - c*s*phi*R), and
        # W += c*phi*G is one pass; ||phi*S|| comes from the channel norms (below).
        scale = group["scale"]
        s = 1.0 if group["exact_residual"] else scale
        rank_axis = 1 if side == "right" else 0  # one factor per row (right projector, R is m x r) or per column
        r_norms = low_grad.norm(dim=rank_axis)
        phi = direction.norm(dim=rank_axis) / (r_norms + 1e-8)
        # Per channel ||G - s*PB(R)||^2 = ||G||^2 - (2s - s^2)*||R||^2: <G, PB(R)> = ||R||^2 as R = P^T G, and
        # ||PB(R)|| = ||R|| as the projector is orthonormal (an SVD's or a QR's factor).
        g_norms = torch.linalg.vector_norm(p.grad, dim=rank_axis)
        residual_sq = (g_norms.square() - (2.0 * s - s * s) * r_norms.square()).clamp_min_(0.0)
        norm = (phi.square() * residual_sq).sum().sqrt()
        if "limiter_norm" in state:
            # factor >= 1: divide by it so the norm grows at most GROWTH_LIMIT-fold over the kept one
            factor = torch.clamp(norm / (state["limiter_norm"] + 1e-8), min=GROWTH_LIMIT) / GROWTH_LIMIT
            state["limiter_norm"].copy_(norm / factor)
            c_phi = phi * (alpha / factor)
        else:
            state["limiter_norm"] = norm
            c_phi = phi * alpha
        c_phi = c_phi.unsqueeze(1) if side == "right" else c_phi
        self._apply_back(p, direction * (alpha * scale) - low_grad * (c_phi * s), state, side, 1.0)
        p.addcmul_(p.grad, c_phi)


# --- registry -------------------------------------------------------------------------------
def fira_state_bytes(model: nn.Module, config: FiraConfig) -> int:
    """GaLore's bytes plus one element (the limiter's norm) per projected weight, from step 1 on."""
    return galore_state_bytes(model, config) + sum(p.element_size() for p in split_params(model)[0])


FIRA = register(
    MethodSpec(
        name="fira",
        config=FiraConfig,
        builder=galore_builder(FiraAdamW),
        state_bytes=fira_state_bytes,
        summary="Fira: GaLore-Adam in the subspace plus the residual gradient scaled by ||N||/||R||, norm-growth limited",
        paper="arXiv 2410.01623",
    )
)
