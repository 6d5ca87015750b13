"""APOLLO and APOLLO-Mini (arXiv 2412.05270; authors' package `apollo-torch`).

Adam moments live in a rank-r random-projection space; the Adam direction N
there only yields a scaling factor ‖N‖/‖R‖ (per channel, or per tensor for
Mini) that multiplies the raw full-rank gradient. No SVD.

Facts matched to the authors' `apollo_torch.APOLLOAdamW` (a differential test
checks it): a projected weight's seed is its 1-based index over all params of
all groups in order (plus `seed`, default 0); the projector is
randn(shape, Generator.manual_seed(seed)) / √r, drawn at steps 0, T, 2T, ...
(T = update_proj_gap), after which the seed advances to the 15th int64 drawn
from a generator seeded with it; "std" projects from the right (R = G·Pᵀ,
P r×n) when m ≥ n, else from the left (R = Pᵀ·G, P m×r); moments are never
reset at a refresh; eps is added to √v and bias correction goes into the step
size (HF AdamW); the Fira norm-growth limiter caps the scaled gradient's norm
growth at 1.01×/step; the update is multiplied by √scale (after the limiter,
or before it with scale_front, which the authors' Mini scripts use); weight
decay p -= lr·wd·p after the update. Unprojected params get the same HF AdamW.

The authors keep the projector matrix in state (r·min(m,n) elements); the paper
notes it is regenerable from its seed: `regenerate_projector=True` keeps only
the seed and redraws the matrix every step (memory for compute).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from memopt.optim.registry import MethodSpec, register
from memopt.optim.checks import check, check_adam_args, check_bool, check_choice, check_int, check_range
from memopt.optim.config import AdamConfig
from memopt.optim.kernels import adam_, adam_directions, transformers_step_size
from memopt.optim.targets import split_params

_SEED_ADVANCE = 15
SCALE_TYPES = ("channel", "tensor")


def check_apollo_group(rank: int, update_proj_gap: int, scale: float, scale_type: str) -> None:
    check_range("rank", rank, 1, integer=True)
    check_range("update_proj_gap", update_proj_gap, 1, integer=True)
    check_range("scale", scale, 0.0, lo_open=True)
    check_choice("scale_type", scale_type, SCALE_TYPES)


@dataclass(frozen=True, kw_only=True)
class ApolloConfig(AdamConfig):
    """APOLLO's hyperparameters; the projected group's options (rank, gap, scale, scale_type) as the authors'
    per-group ones."""

    lr: float = 1e-2
    eps: float = 1e-6
    rank: int = 256
    update_proj_gap: int = 200
    scale: float = 1.0
    scale_type: str = "channel"
    scale_front: bool = False
    disable_nl: bool = False
    seed: int = 0
    regenerate_projector: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_apollo_group(self.rank, self.update_proj_gap, self.scale, self.scale_type)
        for name in ("scale_front", "disable_nl", "regenerate_projector"):
            check_bool(name, getattr(self, name))
        check_int("seed", self.seed)


@dataclass(frozen=True, kw_only=True)
class ApolloMiniConfig(ApolloConfig):
    """APOLLO-Mini: rank 1, one scale per tensor, scale 128 applied in front of the limiter (authors' scripts)."""

    rank: int = 1
    scale: float = 128.0
    scale_type: str = "tensor"
    scale_front: bool = True


def next_seed(seed: int) -> int:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, torch.iinfo(torch.int64).max, (_SEED_ADVANCE,), generator=g).tolist()[-1]


def projector(shape: tuple[int, int], rank: int, seed: int, dtype, device) -> torch.Tensor:
    """(r×n) right projector when m ≥ n, else (m×r) left one; Gaussian / √r."""
    m, n = shape
    size = (rank, n) if m >= n else (m, rank)
    g = torch.Generator(device=device).manual_seed(seed)
    return (torch.randn(size, generator=g, device=device, dtype=torch.float32) / math.sqrt(rank)).to(dtype)


class APOLLO(torch.optim.Optimizer):
    def __init__(self, params, lr: float = ApolloConfig.lr, betas=ApolloConfig.betas, eps: float = ApolloConfig.eps,
                 weight_decay: float = ApolloConfig.weight_decay, scale_front: bool = ApolloConfig.scale_front,
                 disable_nl: bool = ApolloConfig.disable_nl, seed: int = ApolloConfig.seed,
                 regenerate_projector: bool = ApolloConfig.regenerate_projector):
        check_adam_args(lr, betas, eps, weight_decay, zero_lr_ok=True)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, scale_front=bool(scale_front),
                        disable_nl=bool(disable_nl), regenerate_projector=bool(regenerate_projector))
        super().__init__(params, defaults)
        index = 0
        for group in self.param_groups:
            if "rank" in group:
                group.setdefault("update_proj_gap", ApolloConfig.update_proj_gap)
                group.setdefault("scale", ApolloConfig.scale)
                group.setdefault("scale_type", ApolloConfig.scale_type)
                group.setdefault("proj_type", "std")
                check_apollo_group(group["rank"], group["update_proj_gap"], group["scale"], group["scale_type"])
                check_choice("proj_type", group["proj_type"], ("std",))
                check(all(p.dim() == 2 for p in group["params"]), "params of a group with a rank",
                      [tuple(p.shape) for p in group["params"]], "2-D weights only")
            for p in group["params"]:
                index += 1
                if p.requires_grad:
                    self.state[p]["seed"] = int(seed) + index  # eager, like the authors: the param order fixes it

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            grads = [self._projected_grad(p, group) if "rank" in group else p.grad for p in params]
            states = [self.state[p] for p in params]
            for state, grad in zip(states, grads):
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(grad)
                    state["exp_avg_sq"] = torch.zeros_like(grad)
                state["step"] = state.get("step", 0) + 1
            moments = ([s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [s["step"] for s in states])
            if "rank" in group:
                directions = adam_directions(grads, *moments, betas=group["betas"], eps=group["eps"])
                for p, low, direction, state in zip(params, grads, directions, states):
                    self._apollo_update(p, low, direction, state, group)
            else:  # HF AdamW's form
                adam_(params, grads, *moments, lr=group["lr"], betas=group["betas"], eps=group["eps"], transformers_eps=True)
            if group["weight_decay"] > 0.0:
                torch._foreach_add_(params, params, alpha=-group["lr"] * group["weight_decay"])  # after the update
        return loss

    def _projector(self, p, state, group) -> torch.Tensor:
        shape, rank, regen = tuple(p.shape), group["rank"], group["regenerate_projector"]
        if state.get("step", 0) % group["update_proj_gap"] == 0 or ("proj" not in state and "proj_seed" not in state):
            state["proj_seed"] = state["seed"]
            state["seed"] = next_seed(state["seed"])
            if not regen:
                state["proj"] = projector(shape, rank, state["proj_seed"], p.grad.dtype, p.device)
                return state["proj"]
        if regen:
            return projector(shape, rank, state["proj_seed"], p.grad.dtype, p.device)
        return state["proj"]

    def _projected_grad(self, p, group) -> torch.Tensor:
        proj = self._projector(p, self.state[p], group)
        m, n = p.grad.shape
        return p.grad @ proj.t() if m >= n else proj.t() @ p.grad

    def _apollo_update(self, p, low, direction, state, group) -> None:
        """W -= step_size * sqrt(scale) * phi * G / limiter, phi = ||N|| / (||R|| + 1e-8), in one pass over W
        (N: the Adam direction in the projected space); ||phi * G|| comes from the channel norms of G, so the
        scaled gradient is never formed."""
        grad = p.grad
        m, n = grad.shape
        if group["scale_type"] == "channel":
            dim = 1 if m >= n else 0  # reduce over the rank axis: one factor per row (m ≥ n) or column
            factor = direction.norm(dim=dim) / (low.norm(dim=dim) + 1e-8)
            norm = (factor.square() * torch.linalg.vector_norm(grad, dim=dim).square()).sum().sqrt()
            factor = factor.unsqueeze(1) if dim == 1 else factor
        else:
            factor = direction.norm() / (low.norm() + 1e-8)
            norm = factor * grad.norm()
        root_scale = math.sqrt(group["scale"])
        coefficient = factor * (-transformers_step_size(group["lr"], group["betas"], state["step"]) * root_scale)
        if not group["disable_nl"]:
            norm = norm * root_scale if group["scale_front"] else norm
            if "scaled_grad" in state:
                limiter = torch.clamp(norm / (state["scaled_grad"] + 1e-8), min=1.01) / 1.01
                coefficient = coefficient / limiter
                state["scaled_grad"] = norm / limiter
            else:
                state["scaled_grad"] = norm
        p.addcmul_(grad, coefficient if coefficient.dim() else coefficient.reshape(1, 1))


# ---- registry ----

def build_apollo(model: nn.Module, config: ApolloConfig) -> APOLLO:
    c = config
    targets, rest = split_params(model)
    groups = [{"params": rest}, {"params": targets, "rank": c.rank, "update_proj_gap": c.update_proj_gap,
                                 "scale": c.scale, "scale_type": c.scale_type, "proj_type": "std"}]
    return APOLLO([g for g in groups if g["params"]], lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay,
                  scale_front=c.scale_front, disable_nl=c.disable_nl, seed=c.seed,
                  regenerate_projector=c.regenerate_projector)


def apollo_state_bytes(model: nn.Module, config: ApolloConfig) -> int:
    targets, rest = split_params(model)
    total = sum(2 * p.numel() * p.element_size() for p in rest)
    for p in targets:
        big, small = max(p.shape), min(p.shape)
        total += 2 * config.rank * big * p.element_size()  # moments, rank × max(m, n)
        total += 0 if config.regenerate_projector else config.rank * small * p.element_size()
        total += 0 if config.disable_nl else p.element_size()  # the limiter's previous norm (0-d)
    return total


PAPER = "arXiv 2412.05270"
register(MethodSpec(
    name="apollo", config=ApolloConfig, builder=build_apollo, state_bytes=apollo_state_bytes,
    summary="Adam moments in a seeded rank-r random projection give per-channel scales ‖N‖/‖R‖ for the raw "
            "gradient; norm-growth limiter",
    paper=PAPER,
))
register(MethodSpec(
    name="apollo-mini", config=ApolloMiniConfig, builder=build_apollo, state_bytes=apollo_state_bytes,
    summary="APOLLO at rank 1 with one scale per tensor, scale 128 (SGD-like memory)",
    paper=PAPER,
))
