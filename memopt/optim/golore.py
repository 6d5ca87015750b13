"""GoLore (arXiv 2410.11289, "Subspace Optimization for LLMs with Convergence Guarantees"):
GaLore whose projector stops following the gradient's SVD late in training and becomes
a random point of the Stiefel manifold instead; with stochastic gradients that is what
makes the subspace method provably convergent (GaLore's SVD subspace can lock onto noise).

Behaviour, from the benchmark repo's `pt_golore` (OptimAI-Lab/Memory_Efficient_Pretraining):
- Everything is GaLoreAdamW's (refresh at steps 0, T, 2T, ..., Adam in the projected
  shape, scale, weight decay, proj types).
- At a refresh, the projector is random once step >= rand_ratio * total_steps (their
  `state["step"] >= rand_epoch`, with rand_epoch = rand_ratio * num_training_steps), so the
  switch takes effect at the first refresh at or after that step.
- At every refresh the first moment is carried into the new basis,
  m <- m · P_old · P_newᵀ (right projector; P_newᵀ · P_old · m for a left one); the second
  moment is kept as is (theirs too).

Their faults, fixed rather than copied:
- the re-projected first moment was bound to a local name and never written back, so the
  refresh step used it once and the next step went on from the stale old-basis moment:
  here it replaces the state's moment (`project_momentum=False` keeps GaLore's behaviour);
- their random matrix is Z (ZᵀZ)^(-1/2) from the global, unseeded RNG; for the right
  projector (r x n, r < n) ZᵀZ is singular, so the matrix is inf/nan: here it is the Q of a
  QR of a seeded Gaussian (signs fixed by diag(R), so Haar-distributed), orthonormal columns
  (left, m x r) or rows (right, r x n), drawn from a generator seeded by (seed, the
  parameter's index over all groups, the step), so a resumed run draws the same matrices;
- `rand_epoch` was read from the param group but never put there (KeyError), and the
  launcher's `opt_rank` is undefined: here `rand_ratio`/`total_steps` are plain options.

`total_steps` (the number of optimizer steps of the run) is required while `rand_ratio`
is set: without it the switch cannot be placed, and a silent never-switching "golore"
would be GaLore under another name, so construction raises. `rand_ratio=None` is plain
GaLore (plus the momentum carry-over), like the benchmark repo's default flag -1.

State: exactly GaLore's (moments in the projected shape + projector); the random
projector is kept like the SVD one (regenerable from the seed, but kept, as theirs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch

from memopt.optim.checks import check, check_bool, check_int, check_range
from memopt.optim.galore import GaLoreAdamW, GaLoreConfig, galore_builder, galore_state_bytes, projector_side
from memopt.optim.registry import MethodSpec, register


def check_golore_args(rand_ratio: float | None, total_steps: int | None, seed: int, project_momentum: bool) -> None:
    if rand_ratio is not None:
        check_range("rand_ratio", rand_ratio, 0.0, 1.0, hi_open=False)
        check(total_steps is not None, "total_steps", total_steps,
              "the run's optimizer-step count (an int >= 1) while rand_ratio is set: the switch to random "
              "projectors happens at rand_ratio * total_steps; rand_ratio=None never switches (plain GaLore)")
    if total_steps is not None:
        check_range("total_steps", total_steps, 1, integer=True)
    check_int("seed", seed)
    check_bool("project_momentum", project_momentum)


@dataclass(frozen=True, kw_only=True)
class GoLoreConfig(GaLoreConfig):
    """GaLore's, plus the switch (rand_ratio: the README's methods table); total_steps is a run fact that
    the engine supplies."""

    rand_ratio: float | None = 0.25
    total_steps: int | None = None
    seed: int = 0
    project_momentum: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_golore_args(self.rand_ratio, self.total_steps, self.seed, self.project_momentum)


def random_stiefel(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """rows x cols (rows >= cols) with orthonormal columns, Haar-distributed: Q of QR(Gaussian)."""
    z = torch.randn(rows, cols, generator=generator, dtype=torch.float32)
    q, r = torch.linalg.qr(z)
    return q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(()))


class GoLoreAdamW(GaLoreAdamW):
    def __init__(self, params: Iterable[Any], lr: float = 1e-3, *args: Any,
                 rand_ratio: float | None = GoLoreConfig.rand_ratio, total_steps: int | None = GoLoreConfig.total_steps,
                 seed: int = GoLoreConfig.seed, project_momentum: bool = GoLoreConfig.project_momentum,
                 **kwargs: Any) -> None:
        extra = dict(rand_ratio=rand_ratio, total_steps=total_steps, seed=seed, project_momentum=project_momentum)
        check_golore_args(**extra)
        super().__init__(params, lr, *args, **kwargs)
        # GoLore-only defaults: filled into the groups so far and, through self.defaults, later ones.
        self.defaults.update(extra)
        for group in self.param_groups:
            for key, value in extra.items():
                group.setdefault(key, value)
            check_golore_args(**{k: group[k] for k in extra})

    def _param_index(self, p: torch.Tensor) -> int:
        flat = [q for g in self.param_groups for q in g["params"]]
        return next(i for i, q in enumerate(flat) if q is p)

    def _is_random(self, state: dict[str, Any], group: dict[str, Any]) -> bool:
        ratio = group["rand_ratio"]
        return ratio is not None and state["step"] >= ratio * group["total_steps"]

    def _new_projectors(self, p: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> dict[str, torch.Tensor]:
        if not self._is_random(state, group):
            return super()._new_projectors(p, grad, state, group)
        # hash of an int tuple is fixed across processes (PYTHONHASHSEED touches str/bytes only)
        key = hash((group["seed"], self._param_index(p), state["step"])) & (2**63 - 1)
        gen = torch.Generator().manual_seed(key)
        m, n = grad.shape
        r = group["rank"]
        side = projector_side(group["proj_type"], m, n)
        new = {}
        if side in ("left", "full"):
            new["proj_left" if side == "full" else "proj"] = random_stiefel(m, r, gen).to(grad.dtype)
        if side in ("right", "full"):
            new["proj_right" if side == "full" else "proj"] = random_stiefel(n, r, gen).t().to(grad.dtype, copy=True)
        return new

    def _refresh(self, p: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        side = projector_side(group["proj_type"], *grad.shape)
        keys = ("proj_left", "proj_right") if side == "full" else ("proj",)
        carry = group["project_momentum"] and "exp_avg" in state and all(k in state for k in keys)
        old = {k: state[k].clone() for k in keys} if carry else None
        super()._refresh(p, grad, state, group)
        if not carry:
            return  # first refresh (also the first after a full-rank warm-up): nothing to carry
        m = state["exp_avg"]
        if side == "right":
            m.copy_(m @ old["proj"] @ state["proj"].t())
        elif side == "left":
            m.copy_(state["proj"].t() @ old["proj"] @ m)
        else:
            m.copy_(state["proj_left"].t() @ old["proj_left"] @ m @ old["proj_right"] @ state["proj_right"].t())


# --- registry -------------------------------------------------------------------------------
GOLORE = register(
    MethodSpec(
        name="golore",
        config=GoLoreConfig,
        builder=galore_builder(GoLoreAdamW),
        state_bytes=galore_state_bytes,  # the random projector has the SVD one's shape and is kept the same way
        summary="GoLore: GaLore whose projectors become random orthonormal (seeded QR) after rand_ratio of training",
        paper="arXiv 2410.11289",
    )
)
