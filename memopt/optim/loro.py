"""LoRO (arXiv 2410.11773; authors' repo mzf666/LORO-main, `loro_torch/loro_optim.py`).

Each target W is kept as W = M·Nᵀ (M out×r, N in×r, xavier-normal init, no α/r).
Both factors get Adam-normalized directions dM, dN (HF AdamW style: eps on √v,
bias correction in the step size s). Every step t (1-based):
- t % K != 0, cheap step: M -= s·c·dM, N -= s·c·dN, then decay M -= s·wd·M, with
  c = `lr_scaler`; the authors' -1 means r / the model's hidden size (their lowrank_module.py puts
  it into the groups), which the registry builder does (`scaler_base="hidden"`); `scaler_base=
  "shape"` gives r / max(shape) per factor instead (memopt's earlier rule: on llama-9m's MLP factors
  2.75 times smaller than the authors'), and so does -1 in a group of the LoRO class used directly,
  which does not know the model;
- t % K == 0, exact step: QR both factors (M = U·Rm, N = V·Rn), recover
  G·V = dM·Rn⁻¹ and Uᵀ·G = Rm⁻ᵀ·dNᵀ, project G on the tangent space of the rank-r
  manifold at W, and retract W − s·P_T(G) onto it through the SVD of a 2r×2r core
  (truncated to r, split as √Σ into both factors); then, with `refresh`="all"
  (authors' scripts), every Adam state of the optimizer is zeroed.
Other params get the same HF AdamW. The authors pick the exact step in the
training loop (`step(use_exact_loro=...)`); here the optimizer counts steps itself.
Every Adam update runs on torch's fused kernel (memopt.optim.kernels), c as a
per-tensor factor on lr; the exact step takes the directions from it.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from memopt.optim.registry import MethodSpec, register
from memopt.optim.reparam import planned_trainables, reparameterize
from memopt.optim.checks import check_adam_args, check_choice, check_range
from memopt.optim.config import AdamConfig
from memopt.optim.kernels import adam_, adam_directions, transformers_step_size
from memopt.optim.targets import target_linears

REFRESH_MODES = (None, "all", "lrk", "reg")


SCALER_BASES = ("hidden", "shape")


def check_loro_args(exact_every: int, lr_scaler: float, refresh: str | None) -> None:
    check_range("exact_every", exact_every, 1, integer=True)
    check_range("lr_scaler", lr_scaler, -math.inf)  # any number; < 0: r / (hidden size or max(shape))
    check_choice("refresh", refresh, REFRESH_MODES)


@dataclass(frozen=True, kw_only=True)
class LoROConfig(AdamConfig):
    """The authors' scripts' values; eps as their HF-style AdamW."""

    lr: float = 1e-2
    eps: float = 1e-6
    rank: int = 128
    exact_every: int = 500
    lr_scaler: float = -1.0
    scaler_base: str = "hidden"  # what lr_scaler -1 divides the rank by: the model's hidden size, or max(shape)
    refresh: str | None = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("rank", self.rank, 1, integer=True)
        check_loro_args(self.exact_every, self.lr_scaler, self.refresh)
        check_choice("scaler_base", self.scaler_base, SCALER_BASES)


class LoROLinear(nn.Module):
    def __init__(self, linear: nn.Linear, rank: int):
        super().__init__()
        self.in_features, self.out_features, self.rank = linear.in_features, linear.out_features, rank
        dev, dt = linear.weight.device, linear.weight.dtype
        self.weight_out = nn.Parameter(nn.init.xavier_normal_(torch.empty(self.out_features, rank, device=dev, dtype=dt)))
        self.weight_in = nn.Parameter(nn.init.xavier_normal_(torch.empty(self.in_features, rank, device=dev, dtype=dt)))
        self.bias = nn.Parameter(linear.bias.detach().clone()) if linear.bias is not None else None

    def dense_weight(self) -> torch.Tensor:
        return self.weight_out @ self.weight_in.t()

    def forward(self, x):
        y = (x @ self.weight_in) @ self.weight_out.t()
        return y if self.bias is None else y + self.bias


def exact_step(M: torch.Tensor, N: torch.Tensor, dM: torch.Tensor, dN: torch.Tensor, lr: float):
    """Riemannian step + retraction on the rank-r manifold; returns new (M, N)."""
    dtype, r = M.dtype, M.shape[1]
    M, N, dM, dN = M.float(), N.float(), dM.float(), dN.float()
    U, Rm = torch.linalg.qr(M)
    V, Rn = torch.linalg.qr(N)
    GV = torch.linalg.solve(Rn.t(), dM.t()).t()  # G·V   (out×r)
    UtG = torch.linalg.solve(Rm.t(), dN.t())  # Uᵀ·G  (r×in)
    K0 = UtG @ V
    Q1, K1 = torch.linalg.qr((UtG - UtG @ V @ V.t()).t())
    Q2, K2 = torch.linalg.qr(GV - U @ (U.t() @ GV))
    core = torch.zeros(2 * r, 2 * r, dtype=M.dtype, device=M.device)
    core[:r, :r] = Rm @ Rn.t() - lr * K0
    core[:r, r:] = -lr * K1.t()
    core[r:, :r] = -lr * K2
    Us, S, Vh = torch.linalg.svd(core)
    root = S[:r].sqrt()
    M_new = torch.cat([U, Q2], dim=1) @ (Us[:, :r] * root)
    N_new = torch.cat([V, Q1], dim=1) @ (Vh[:r].t() * root)
    return M_new.to(dtype), N_new.to(dtype)


class LoRO(torch.optim.Optimizer):
    """Groups with `loro=True` hold (M, N) pairs in order: [M1, N1, M2, N2, ...]."""

    def __init__(self, params, lr: float = LoROConfig.lr, betas=LoROConfig.betas, eps: float = LoROConfig.eps,
                 weight_decay: float = LoROConfig.weight_decay, exact_every: int = LoROConfig.exact_every,
                 lr_scaler: float = LoROConfig.lr_scaler, refresh: str | None = LoROConfig.refresh):
        check_adam_args(lr, betas, eps, weight_decay, zero_lr_ok=True)
        check_loro_args(exact_every, lr_scaler, refresh)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, exact_every=int(exact_every),
                        lr_scaler=lr_scaler, refresh=refresh, loro=False, t=0)
        super().__init__(params, defaults)
        for g in self.param_groups:
            if g["loro"] and len(g["params"]) % 2:
                raise ValueError("a loro group must hold (M, N) pairs")

    def _moments(self, params) -> tuple[list, list, list]:
        """The params' moments and step counts (moved to this step), created at a param's first step."""
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
        states = [self.state[p] for p in params]
        return [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [s["step"] for s in states]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        exact_any = False
        for group in self.param_groups:
            group["t"] += 1
            exact = group["t"] % group["exact_every"] == 0
            adam = dict(betas=group["betas"], eps=group["eps"])  # HF AdamW's form (the authors')
            if not group["loro"]:
                params = [p for p in group["params"] if p.grad is not None]
                adam_(params, [p.grad for p in params], *self._moments(params), lr=group["lr"],
                      transformers_eps=True, **adam)
                if group["weight_decay"] > 0:
                    torch._foreach_add_(params, params, alpha=-group["lr"] * group["weight_decay"])
                continue
            ps = group["params"]
            pairs = [(M, N) for M, N in zip(ps[0::2], ps[1::2]) if M.grad is not None and N.grad is not None]
            params = [p for pair in pairs for p in pair]
            moments = self._moments(params)
            if exact:
                exact_any = exact_any or bool(pairs)
                directions = adam_directions([p.grad for p in params], *moments, **adam)
                for k, (M, N) in enumerate(pairs):
                    size = transformers_step_size(group["lr"], group["betas"], moments[2][2 * k])
                    M_new, N_new = exact_step(M, N, directions[2 * k], directions[2 * k + 1], size)
                    M.copy_(M_new)
                    N.copy_(N_new)
                continue
            scalers = []
            for p in params:
                c = group["lr_scaler"] if group["lr_scaler"] >= 0 else min(p.shape) / max(p.shape)
                scalers.append(c)
            adam_(params, [p.grad for p in params], *moments, lr=group["lr"], transformers_eps=True, lr_scales=scalers,
                  **adam)
            if group["weight_decay"] > 0:  # p -= size * wd * p, after the update
                sizes = [transformers_step_size(group["lr"], group["betas"], t) for t in moments[2]]
                torch._foreach_mul_(params, [1.0 - size * group["weight_decay"] for size in sizes])
        if exact_any:
            self._refresh()
        return loss

    def _refresh(self) -> None:
        mode = self.param_groups[0]["refresh"]
        if mode is None:
            return
        for group in self.param_groups:
            if mode == "all" or (mode == "lrk") == group["loro"]:
                for p in group["params"]:
                    state = self.state.get(p)
                    if state:
                        state["step"] = 0
                        state["exp_avg"].zero_()
                        state["exp_avg_sq"].zero_()


def build_loro(model: nn.Module, config: LoROConfig) -> LoRO:
    c = config
    for _, lin in target_linears(model):
        check_range("rank", c.rank, 1, min(lin.in_features, lin.out_features), hi_open=False)
    scale = _cheap_step_scale(model, c)  # before the swap: it reads the model's linears
    modules = reparameterize(model, lambda i, n, lin: LoROLinear(lin, c.rank))
    pairs = [p for m in modules for p in (m.weight_out, m.weight_in)]
    ids = {id(p) for p in pairs}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": rest}, {"params": pairs, "loro": True, "lr_scaler": scale}]
    return LoRO([g for g in groups if g["params"]], lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay,
                exact_every=c.exact_every, lr_scaler=c.lr_scaler, refresh=c.refresh)


def _cheap_step_scale(model: nn.Module, c: LoROConfig) -> float:
    """The factors' lr_scaler: as given, or for -1 the authors' r / hidden size (-1 stays with "shape"). The
    hidden size is the model's `config.hidden_size`; a plain module's is the commonest input width of its
    target linears (a transformer's q, k, v, o, gate and up projections all read the hidden size)."""
    if c.lr_scaler >= 0 or c.scaler_base == "shape":
        return c.lr_scaler
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    if not hidden:
        widths = Counter(lin.in_features for _, lin in target_linears(model))
        hidden = widths.most_common(1)[0][0] if widths else c.rank
    return c.rank / hidden


def loro_state_bytes(model: nn.Module, config: LoROConfig) -> int:
    # two moments per element; step counts are Python ints
    return sum(2 * n * el for n, el in planned_trainables(model, config.rank))


register(MethodSpec(
    name="loro", config=LoROConfig, builder=build_loro, state_bytes=loro_state_bytes,
    summary="W = M·Nᵀ moved along the Riemannian gradient of the rank-r manifold: exact retraction every K steps "
            "(then states reset), cheap scaled factor steps between",
    paper="arXiv 2410.11773", reparameterizes=True,
))
