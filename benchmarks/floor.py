"""A method's floor (issue 15): the work its optimizer step cannot avoid, run as a contender in the same rounds.

floor = its projection GEMMs, on the shapes and with the projector sides the pipeline gives it, at whatever GEMM
throughput this machine has in the run, plus one pass of torch's fused Adam kernel over the elements it keeps
state for. Per projected m x n weight at rank r (2*m*n*r flops a GEMM):
- GaLore, GoLore, Fira: project R = P^T G (or G P^T) and add project_back into W: 2 GEMMs (Fira's residual
  joins the project-back, memopt.optim.fira; the authors' code runs a third);
- APOLLO, APOLLO-Mini: project only, 1 GEMM (the update scales the raw gradient);
- LoRO: none on its cheap steps (the factors are the weights; its exact step, every 500 steps, is timed apart).
The Adam pass: the plain tensors plus the moments' shapes (GaLore family, APOLLO) or the factors (LoRO).
Not in the floor: SVDs, QRs, random projectors (amortized in the measured time), norms, elementwise passes.

The GEMMs read the method's own gradients and add 1e-20 x the product into its weights (no copies, no effect
on their values); the Adam pass runs on buffers shared by every floor (one set per shape).
"""
from __future__ import annotations

import time

import torch

from memopt.optim.galore import projector_side

GEMMS_PER_WEIGHT = {"galore": 2, "golore": 2, "fira": 2, "apollo": 1, "apollo-mini": 1, "loro": 0}
VANISHING = 1e-20  # alpha of the floor's project-back into the real weights: the product rounds away


class AdamPool:
    """(param, grad, exp_avg, exp_avg_sq) buffers per shape, shared by the floors: only their traffic counts."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[int, ...], list[torch.Tensor]] = {}

    def take(self, shape: tuple[int, ...], i: int) -> list[torch.Tensor]:
        """The i-th set of buffers of this shape (a method with several tensors of one shape gets distinct ones)."""
        sets = self.buffers.setdefault(tuple(shape), [])
        while len(sets) <= i:
            sets.append([torch.randn(shape) * 1e-2, torch.randn(shape) * 1e-2, torch.zeros(shape), torch.rand(shape) * 1e-4])
        return sets[i]


class Floor:
    """`step()` runs the GEMMs, then the Adam pass; seconds and flops are accumulated for the table."""

    def __init__(self, gemms: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]],
                 adam: list[list[torch.Tensor]]) -> None:
        self.gemms, self.adam = gemms, adam
        self.flops_per_step = sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b, _, _ in gemms)
        self.step_tensor = [torch.tensor(10.0)] * len(adam)
        self.gemm_s = self.adam_s = 0.0
        self.steps = 0

    def step(self, closure=None) -> None:
        t0 = time.perf_counter()
        for a, b, out, into_weight in self.gemms:
            if into_weight:
                out.addmm_(a, b, alpha=VANISHING)
            else:
                torch.mm(a, b, out=out)
        t1 = time.perf_counter()
        if self.adam:
            torch._fused_adam_(*[[s[k] for s in self.adam] for k in range(4)], [], self.step_tensor, lr=1e-3,
                               beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False)
        t2 = time.perf_counter()
        self.gemm_s, self.adam_s, self.steps = self.gemm_s + t1 - t0, self.adam_s + t2 - t1, self.steps + 1

    def gflops(self) -> float:
        return self.flops_per_step * self.steps / self.gemm_s / 1e9 if self.gemm_s else float("nan")


def projection_gemms(p: torch.nn.Parameter, rank: int, side: str, count: int) -> list[tuple]:
    """The `count` GEMMs of one projected weight: R = project(G), then W += project_back(N)."""
    m, n = p.shape
    if side == "right":  # P r x n: R = G P^T (m x r), W += N P
        proj, low = torch.randn(rank, n), torch.randn(m, rank)
        ops = [(p.grad, proj.t(), torch.empty(m, rank), False), (low, proj, p.detach(), True)]
    else:  # P m x r: R = P^T G (r x n), W += P N
        proj, low = torch.randn(m, rank), torch.randn(rank, n)
        ops = [(proj.t(), p.grad, torch.empty(rank, n), False), (proj, low, p.detach(), True)]
    return ops[:count]


def build_floor(method: str, opt: torch.optim.Optimizer, pool: AdamPool) -> Floor | None:
    """The floor of `method` as built (its param groups say which weights are projected, at which rank);
    None for a method without one."""
    if method not in GEMMS_PER_WEIGHT:
        return None
    gemms, shapes = [], []
    for group in opt.param_groups:
        rank = group.get("rank")
        for p in group["params"]:
            if p.grad is None:
                continue
            if rank is None or method == "loro":
                shapes.append(tuple(p.shape))
                continue
            side = projector_side(group.get("proj_type", "std"), *p.shape)
            gemms += projection_gemms(p, rank, side, GEMMS_PER_WEIGHT[method])
            shapes.append((p.shape[0], rank) if side == "right" else (rank, p.shape[1]))
    seen: dict[tuple[int, ...], int] = {}
    adam = []
    for shape in shapes:
        adam.append(pool.take(shape, seen.get(shape, 0)))
        seen[shape] = seen.get(shape, 0) + 1
    return Floor(gemms, adam)
