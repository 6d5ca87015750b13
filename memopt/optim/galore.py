"""GaLore-AdamW (arXiv 2403.03507): Adam moments in a rank-r subspace of each 2-D gradient.

Drop-in for the authors' `galore_torch.GaLoreAdamW`: param groups that carry `rank`
are projected with their `update_proj_gap`, `scale` and `proj_type`; every other
group gets plain AdamW inside the same optimizer. What follows the authors' code
(checked against galore-torch 1.0, see galore_test.py):

- Adam is theirs (transformers-style): denom = sqrt(v) + eps with eps *not* bias
  corrected, step_size = lr * sqrt(1 - b2^t) / (1 - b1^t), default eps 1e-6.
- The per-tensor step counter is read *before* it moves: projector SVDs happen at
  steps 0, T, 2T, ...
- The update is W -= step_size * scale * project_back(m / denom), then decoupled
  weight decay W -= lr * wd * W at full rank, after the update, for all groups.
- Moments are neither reset nor re-projected at a refresh (authors' issue 54).

What differs, on purpose:
- The projector is a plain tensor in `state` (`proj`, or `proj_left`/`proj_right`
  for `full`), a copy of the SVD slice, so checkpoints load with
  `torch.load(weights_only=True)` and the full SVD factor is not kept alive (the
  authors keep a view of Vh/U, which pins the whole factor for fp32 weights).
- The projector side is fixed by `proj_type` and the weight's shape, not guessed
  again from the low-rank gradient's shape in `project_back`.
- Options (off by default, as in the authors' code): `reset_state_on_refresh`
  zeroes the moments and restarts their bias correction at every refresh after the
  first; `full_rank_warmup_steps` = K runs plain AdamW on projected weights for K
  steps, then drops the full moments and projects, refreshing when (step-K) % T == 0.
- `svd="randomized"` finds the projector with torch.svd_lowrank (rank + 8 columns, 2
  subspace iterations, seeded from the step) instead of a full SVD: a faster refresh
  whose subspace error BENCHMARKS.md reports beside its speed.
- Every Adam update runs on torch's fused kernel (memopt.optim.kernels: the same
  formula, one pass over memory instead of the foreach path's ten): the full-size
  tensors (embeddings, lm_head, norms) in place, the low-rank moments' directions
  returned and projected back into the weight with `addmm_` (no m x n temporary).

State per projected m x n weight (bytes = elements * element size), r = rank:
  std:         2*r*max(m,n) + r*min(m,n)      reverse_std: 2*r*min(m,n) + r*max(m,n)
  right:       2*m*r + r*n                    left:        2*r*n + m*r
  full:        2*r*r + r*(m+n)
plus 2*numel per plain tensor. Step counters are Python ints (no tensor bytes).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from memopt.optim.checks import check, check_adam_args, check_bool, check_choice, check_range
from memopt.optim.config import AdamConfig
from memopt.optim.kernels import adam_, adam_directions, transformers_step_size
from memopt.optim.registry import MethodSpec, register
from memopt.optim.targets import TARGET_KEYS, split_params

PROJ_TYPES = ("std", "reverse_std", "left", "right", "full")
SVD_KINDS = ("full", "randomized")
RANDOMIZED_OVERSAMPLE = 8  # range-finder columns beyond the rank (Halko, Martinsson, Tropp 2011 use 5 to 10)
RANDOMIZED_NITER = 2  # subspace iterations, torch.svd_lowrank's default


def top_singular_vectors(g: torch.Tensor, rank: int, svd: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(U[:, :rank], Vh[:rank]) of `g`: by LAPACK's full SVD (the authors'), or by torch.svd_lowrank.

    The randomized one draws its test matrix from a generator seeded with `seed` and leaves the
    global RNG as it was, so a run (and its resume) does not depend on when refreshes happen.
    """
    if svd == "full":
        u, _, vh = torch.linalg.svd(g, full_matrices=False)
        return u[:, :rank], vh[:rank, :]
    with torch.random.fork_rng(devices=[g.device] if g.device.type == "cuda" else []):
        torch.manual_seed(seed)
        u, _, v = torch.svd_lowrank(g, q=min(rank + RANDOMIZED_OVERSAMPLE, *g.shape), niter=RANDOMIZED_NITER)
    return u[:, :rank], v[:, :rank].t()


def projector_side(proj_type: str, m: int, n: int) -> str:
    """Which projector a m x n weight gets: 'left' (P m x r), 'right' (P r x n) or 'full' (both)."""
    if proj_type == "std":
        return "right" if m >= n else "left"
    if proj_type == "reverse_std":
        return "left" if m >= n else "right"
    return proj_type


def projected_state_elements(m: int, n: int, rank: int, proj_type: str) -> int:
    """Elements held for one projected weight: two moments plus the projector(s)."""
    side = projector_side(proj_type, m, n)
    if side == "right":
        return 2 * m * rank + rank * n
    if side == "left":
        return 2 * rank * n + m * rank
    return 2 * rank * rank + rank * (m + n)


def check_projected_shapes(rank: int, shapes: Iterable[tuple[int, ...]]) -> None:
    """The check that needs the model: every projected weight is 2-D and at least `rank` wide."""
    for shape in shapes:
        check(len(shape) == 2, "projected tensor shape", tuple(shape), "2-D weights only")
        check(rank <= min(shape), "rank", rank, f"1 <= rank <= {min(shape)} (smaller dimension of a {shape[0]}x{shape[1]} weight)")


def check_galore_args(
    rank: int, update_proj_gap: int, scale: float, proj_type: str, full_rank_warmup_steps: int,
    reset_state_on_refresh: bool, shapes: Iterable[tuple[int, ...]] = (), svd: str = "full",
) -> None:
    check_range("rank", rank, 1, integer=True)
    check_projected_shapes(rank, shapes)
    check_range("update_proj_gap", update_proj_gap, 1, integer=True)
    check_range("scale", scale, 0.0, lo_open=True)
    check_choice("proj_type", proj_type, PROJ_TYPES)
    check_range("full_rank_warmup_steps", full_rank_warmup_steps, 0, integer=True)
    check_bool("reset_state_on_refresh", reset_state_on_refresh)
    check_choice("svd", svd, SVD_KINDS)


@dataclass(frozen=True, kw_only=True)
class GaLoreConfig(AdamConfig):
    """GaLore's hyperparameters. lr, rank, gap and scale: the authors' llama_60m script; eps: their
    class (transformers' AdamW). Fira, GoLore and layer-wise GaLore extend it."""

    lr: float = 0.01
    eps: float = 1e-6
    rank: int = 128
    update_proj_gap: int = 200
    scale: float = 0.25
    proj_type: str = "std"
    reset_state_on_refresh: bool = False  # seed "GaLore from scratch"; the authors never reset (issue 54)
    full_rank_warmup_steps: int = 0
    svd: str = "full"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_galore_args(self.rank, self.update_proj_gap, self.scale, self.proj_type, self.full_rank_warmup_steps,
                          self.reset_state_on_refresh, svd=self.svd)


class GaLoreAdamW(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,  # the authors' class default; GaLoreConfig's 0.01 is their scripts'
        betas: tuple[float, float] = GaLoreConfig.betas,
        eps: float = GaLoreConfig.eps,
        weight_decay: float = GaLoreConfig.weight_decay,
        update_proj_gap: int = GaLoreConfig.update_proj_gap,
        scale: float = GaLoreConfig.scale,
        proj_type: str = GaLoreConfig.proj_type,
        reset_state_on_refresh: bool = GaLoreConfig.reset_state_on_refresh,
        full_rank_warmup_steps: int = GaLoreConfig.full_rank_warmup_steps,
        svd: str = GaLoreConfig.svd,
    ) -> None:
        check_adam_args(lr, betas, eps, weight_decay)
        check_galore_args(1, update_proj_gap, scale, proj_type, full_rank_warmup_steps, reset_state_on_refresh, svd=svd)
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, update_proj_gap=update_proj_gap,
            scale=scale, proj_type=proj_type, reset_state_on_refresh=reset_state_on_refresh,
            full_rank_warmup_steps=full_rank_warmup_steps, svd=svd,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        g = self.param_groups[-1]  # defaults are filled in now; check every group, also later ones
        check_adam_args(g["lr"], g["betas"], g["eps"], g["weight_decay"])
        if g.get("rank") is not None:
            check_galore_args(g["rank"], g["update_proj_gap"], g["scale"], g["proj_type"], g["full_rank_warmup_steps"],
                              g["reset_state_on_refresh"], [tuple(p.shape) for p in g["params"]], svd=g["svd"])

    # --- projection -------------------------------------------------------------------------
    def _refresh(self, p: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        for key, value in self._new_projectors(p, grad, state, group).items():
            if key in state:
                state[key].copy_(value)  # reuse the tensor held since the last refresh
            else:
                state[key] = value

    def _new_projectors(self, p: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> dict[str, torch.Tensor]:
        """{'proj': ...} or {'proj_left': ..., 'proj_right': ...} from the SVD of `grad` (GoLore overrides)."""
        u, vh = top_singular_vectors(grad.float(), group["rank"], group.get("svd", "full"), seed=state["step"])
        side = projector_side(group["proj_type"], *grad.shape)
        # .to(copy=True): own storage of exactly the slice, not a view pinning the whole factor.
        new = {}
        if side in ("left", "full"):
            new["proj_left" if side == "full" else "proj"] = u.to(grad.dtype, copy=True)
        if side in ("right", "full"):
            new["proj_right" if side == "full" else "proj"] = vh.to(grad.dtype, copy=True)
        return new

    @staticmethod
    def _project(grad: torch.Tensor, state: dict[str, Any], side: str) -> torch.Tensor:
        if side == "right":
            return grad @ state["proj"].t()
        if side == "left":
            return state["proj"].t() @ grad
        return state["proj_left"].t() @ grad @ state["proj_right"].t()

    @staticmethod
    def _project_back(low: torch.Tensor, state: dict[str, Any], side: str) -> torch.Tensor:
        """project_back as a new m x n tensor (the fused `_apply_back` avoids it where it can)."""
        if side == "right":
            return low @ state["proj"]
        if side == "left":
            return state["proj"] @ low
        return state["proj_left"] @ low @ state["proj_right"]

    @staticmethod
    def _apply_back(p: torch.Tensor, n: torch.Tensor, state: dict[str, Any], side: str, alpha: float) -> None:
        # W += alpha * project_back(N), fused: no m x n temporary.
        if side == "right":
            p.addmm_(n, state["proj"], alpha=alpha)
        elif side == "left":
            p.addmm_(state["proj"], n, alpha=alpha)
        else:
            p.addmm_(state["proj_left"] @ n, state["proj_right"], alpha=alpha)

    # --- step -------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._group_step(group)
        return loss

    def _update_projected(self, p: torch.Tensor, state: dict[str, Any], side: str, direction: torch.Tensor,
                          low_grad: torch.Tensor, alpha: float, group: dict[str, Any]) -> None:
        """W += alpha * scale * project_back(direction); subclasses (Fira) add to it. `low_grad` is the
        projected gradient of this step, `p.grad` still the full one."""
        self._apply_back(p, direction, state, side, alpha * group["scale"])

    def _group_step(self, group: dict[str, Any], only: list[torch.Tensor] | None = None) -> None:
        """Update the group's params that have a gradient (of `only`, when given: the layer-wise hook's one)."""
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        rank = group.get("rank")
        params, grads, exp_avgs, exp_avg_sqs, moment_steps = [], [], [], [], []
        low_rank: dict[int, tuple[dict[str, Any], str]] = {}  # index in params -> (state, side)
        for p in group["params"] if only is None else only:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("GaLoreAdamW does not support sparse gradients")
            state = self.state[p]
            if not state:
                state["step"] = 0  # drives the refresh schedule, read before it moves (authors' order)
                state["moment_step"] = 0  # drives bias correction; restarts when moments are reset
            grad = p.grad
            side = None
            if rank is not None and state["step"] >= group["full_rank_warmup_steps"]:
                side = projector_side(group["proj_type"], *p.shape)
                since = state["step"] - group["full_rank_warmup_steps"]
                if since % group["update_proj_gap"] == 0:
                    self._refresh(p, grad, state, group)
                    if since > 0 and group["reset_state_on_refresh"]:
                        state["exp_avg"].zero_()
                        state["exp_avg_sq"].zero_()
                        state["moment_step"] = 0
                grad = self._project(grad, state, side)
            if "exp_avg" not in state or state["exp_avg"].shape != grad.shape:
                # first step, or the switch from full-rank warm-up to the projected shape
                state["exp_avg"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
                state["moment_step"] = 0
            state["step"] += 1
            state["moment_step"] += 1
            if side is not None:
                low_rank[len(params)] = (state, side)
            params.append(p)
            grads.append(grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            moment_steps.append(state["moment_step"])
        # Everything through torch's fused Adam kernel (memopt.optim.kernels), in the authors' form: the
        # full-size tensors updated in place, the projected ones' directions returned and applied back.
        full = [i for i in range(len(params)) if i not in low_rank]
        adam_(*([xs[i] for i in full] for xs in (params, grads, exp_avgs, exp_avg_sqs, moment_steps)),
              lr=lr, betas=(beta1, beta2), eps=eps, transformers_eps=True)
        projected = list(low_rank)
        directions = adam_directions(*([xs[i] for i in projected] for xs in (grads, exp_avgs, exp_avg_sqs, moment_steps)),
                                     betas=(beta1, beta2), eps=eps)
        for i, direction in zip(projected, directions):
            state, side = low_rank[i]
            self._update_projected(params[i], state, side, direction, grads[i],
                                   -transformers_step_size(lr, (beta1, beta2), moment_steps[i]), group)
        if wd > 0.0:
            torch._foreach_add_(params, params, alpha=-lr * wd)  # decoupled, full rank, after the update


def galore_param_groups(
    model: nn.Module,
    rank: int,
    update_proj_gap: int = GaLoreConfig.update_proj_gap,
    scale: float = GaLoreConfig.scale,
    proj_type: str = GaLoreConfig.proj_type,
    reset_state_on_refresh: bool = GaLoreConfig.reset_state_on_refresh,
    full_rank_warmup_steps: int = GaLoreConfig.full_rank_warmup_steps,
    targets: tuple[str, ...] = TARGET_KEYS,
    svd: str = GaLoreConfig.svd,
) -> list[dict[str, Any]]:
    """Two groups: the weights `targets.split_params` picks (projected), and every other trainable tensor."""
    projected, plain = split_params(model, targets)
    groups: list[dict[str, Any]] = []
    if plain:
        groups.append({"params": plain})
    if projected:
        groups.append({
            "params": projected, "rank": rank, "update_proj_gap": update_proj_gap, "scale": scale,
            "proj_type": proj_type, "reset_state_on_refresh": reset_state_on_refresh,
            "full_rank_warmup_steps": full_rank_warmup_steps, "svd": svd,
        })
    return groups


# --- registry -------------------------------------------------------------------------------
GROUP_OPTIONS = ("update_proj_gap", "scale", "proj_type", "reset_state_on_refresh", "full_rank_warmup_steps", "svd")


def galore_builder(optimizer_class: type[GaLoreAdamW]) -> Callable[[nn.Module, GaLoreConfig], GaLoreAdamW]:
    """The builder of GaLoreAdamW or a subclass: a config's fields are the class's keyword arguments,
    except `rank`, which only the projected group carries (with the per-group options, as the authors')."""
    def build(model: nn.Module, config: GaLoreConfig) -> GaLoreAdamW:
        kwargs = config.as_dict()
        rank = kwargs.pop("rank")
        return optimizer_class(galore_param_groups(model, rank, **{k: kwargs[k] for k in GROUP_OPTIONS}), **kwargs)
    return build


def galore_state_bytes(model: nn.Module, config: GaLoreConfig) -> int:
    """Bytes held between steps once past any full-rank warm-up (formula in the module docstring)."""
    projected, plain = split_params(model)
    check_projected_shapes(config.rank, [tuple(p.shape) for p in projected])
    total = sum(2 * p.numel() * p.element_size() for p in plain)
    for p in projected:
        total += projected_state_elements(p.shape[0], p.shape[1], config.rank, config.proj_type) * p.element_size()
    return total


GALORE = register(
    MethodSpec(
        name="galore",
        config=GaLoreConfig,
        builder=galore_builder(GaLoreAdamW),
        state_bytes=galore_state_bytes,
        summary="GaLore-AdamW: Adam moments in a rank-r SVD subspace of attention/MLP gradients, refreshed every T steps",
        paper="arXiv 2403.03507",
    )
)
