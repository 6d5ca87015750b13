"""The contract every registered optimizer meets: one entry per method (torch's
OptimizerInfo / optim_db, torch/testing/_internal/common_optimizers.py). Test support.

An entry gives hyperparameter samples for TINY_MODEL (llama-micro: hidden 32, MLP 88,
so every projected weight is 32 x 32, 88 x 32 or 32 x 88), chosen so that a run of
STEPS steps crosses the method's special events (projector refreshes, re-selections,
merges, resets, exact steps, the GoLore switch) after SAVE_AT, where the round trip
saves; `events` reads those events off the optimizer, one component per kind, and
the round trip checks that each kind happens after the save. The first sample (or
`learn`, where the events need a run that does not learn) also has to learn:
LEARN_STEPS steps on testing.pattern_batch. `invalid` samples (applied
on top of the first) name the argument their ValueError must name; `default_build`
says what the registry's defaults do on TINY_MODEL, with only the run facts given:
None when they build and step, else the argument of the one ValueError.

The shared tests, parametrized over this table: checkpoint_test.py (round trip),
memopt/memory_test.py (measured bytes == formula), contract_test.py (the rest, and a
registered method without an entry fails there).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable

import torch
from torch import nn

TINY_MODEL = dict(name="llama-micro", vocab_size=64, max_position_embeddings=16)
STEPS, SAVE_AT, LEARN_STEPS = 6, 2, 30

Events = Callable[[nn.Module, torch.optim.Optimizer], tuple[Hashable, ...]]


def tiny_model(seed: int = 0) -> nn.Module:
    # imported here: memopt.optim itself stays free of transformers; only tests call this
    from memopt.models import build_model
    return build_model(**TINY_MODEL, seed=seed)


@dataclass(frozen=True)
class OptimInfo:
    """One method's entry (the module docstring says what each field is for)."""

    name: str
    samples: tuple[dict[str, Any], ...]
    invalid: tuple[tuple[dict[str, Any], str], ...]
    default_build: str | None = None
    events: Events | None = None  # None: no special events (plain Adam-like steps)
    ids: tuple[str, ...] = ()  # a short name per sample, for test ids
    learn: dict[str, Any] | None = None  # the learning test's hyperparameters, where samples[0] cannot learn

    def sample_ids(self) -> list[str]:
        return [f"{self.name}-{i}" for i in (self.ids or range(len(self.samples)))]

    def learn_hyperparameters(self) -> dict[str, Any]:
        return self.samples[0] if self.learn is None else self.learn


def fingerprint(tensors: Iterable[torch.Tensor]) -> tuple[float, ...]:
    """One float64 sum per tensor: changes when the tensor is replaced (a refresh, a merge)."""
    return tuple(float(t.double().sum()) for t in tensors)


def projectors(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[Hashable, ...]:
    return (fingerprint(v for s in opt.state.values() for k, v in sorted(s.items()) if k.startswith("proj")),)


def golore_events(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[Hashable, ...]:
    """Refreshes, and whether the switch point (rand_ratio * total_steps) is past: refreshes from then on are random."""
    projected = [(p, g) for g in opt.param_groups if g.get("rank") for p in g["params"] if p in opt.state]
    return (*projectors(model, opt), any(opt._is_random(opt.state[p], g) for p, g in projected))


def counted(key: str, every: str) -> Events:
    """Events that a group counter fires every `every` steps (resets, exact steps): how many so far."""
    def events(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[Hashable, ...]:
        g = opt.param_groups[-1]
        return (g[key] // g[every],)
    return events


OPTIM_DB: tuple[OptimInfo, ...] = (
    OptimInfo(
        "adamw",
        samples=({"lr": 1e-2, "weight_decay": 0.1}, {"lr": 1e-2, "weight_decay": 0.1, "fused": False}),
        ids=("fused", "foreach"),
        invalid=(({"lr": 0.0}, "lr"), ({"betas": (1.0, 0.9)}, "betas"), ({"eps": -1.0}, "eps"), ({"fused": 1}, "fused")),
    ),
    OptimInfo(
        "adamw-foreach",
        samples=({"lr": 1e-2, "weight_decay": 0.1},),
        invalid=(({"lr": 0.0}, "lr"), ({"weight_decay": -1.0}, "weight_decay")),
    ),
    OptimInfo(
        "galore",
        samples=(  # gap 2: refreshes at steps 0, 2, 4 of every projected weight (the last two after the save)
            {"rank": 4, "update_proj_gap": 2, "weight_decay": 0.1},
            {"rank": 3, "update_proj_gap": 2, "proj_type": "reverse_std"},
            {"rank": 2, "update_proj_gap": 2, "proj_type": "full", "reset_state_on_refresh": True},
            {"rank": 4, "update_proj_gap": 2, "proj_type": "left", "svd": "randomized"},
            {"rank": 5, "update_proj_gap": 3, "proj_type": "right", "full_rank_warmup_steps": 1},
        ),
        ids=("std", "reverse_std", "full-reset", "left-randomized", "right-warmup"),
        invalid=(({"rank": 33}, "rank"), ({"rank": 0}, "rank"), ({"proj_type": "bogus"}, "proj_type"),
                 ({"update_proj_gap": 0}, "update_proj_gap"), ({"scale": 0.0}, "scale"), ({"svd": "lanczos"}, "svd"),
                 ({"full_rank_warmup_steps": -1}, "full_rank_warmup_steps")),
        default_build="rank",  # rank 128 > 32
        events=projectors,
    ),
    OptimInfo(
        "blockllm",
        # re-selections fire on a stalling loss (mean since the selection below the last `patience`), which
        # the slow frozen-embedding run gives after steps 2 and 4; probes are armed after every second step
        samples=({"sparsity": 0.8, "update_freq": 2, "patience": 1, "param_update_interval": 2, "num_bottom_to_sample": 2},),
        learn={"lr": 1e-2, "sparsity": 0.5, "frozen_patterns": ()},  # from scratch, frozen random embeddings cannot
        invalid=(({"sparsity": 1.0}, "sparsity"), ({"patience": 0}, "patience"), ({"update_freq": 0}, "update_freq"),
                 ({"frozen_patterns": ("",)}, "frozen_patterns"), ({"lr": -1.0}, "lr")),
        events=lambda model, opt: (opt.num_selections, tuple(opt.probes)),
    ),
    OptimInfo(
        "apollo",
        samples=({"rank": 4, "update_proj_gap": 2}, {"rank": 2, "update_proj_gap": 2, "regenerate_projector": True}),
        ids=("kept-projector", "regenerated"),
        invalid=(({"rank": 0}, "rank"), ({"scale_type": "row"}, "scale_type"), ({"update_proj_gap": 0}, "update_proj_gap"),
                 ({"scale": 0.0}, "scale")),
        events=lambda model, opt: (tuple(s["seed"] for s in opt.state.values()),),  # a projected seed moves at a refresh
    ),
    OptimInfo(
        "apollo-mini",
        samples=({"update_proj_gap": 2}, {"update_proj_gap": 2, "disable_nl": True}),
        ids=("limited", "no-limiter"),
        invalid=(({"scale": -1.0}, "scale"), ({"disable_nl": "no"}, "disable_nl")),
        events=lambda model, opt: (tuple(s["seed"] for s in opt.state.values()),),
    ),
    OptimInfo(
        "spam",
        # a reset at step 4; clip_delay 2: clipping against a v of at least one step (v = 0 clips everything)
        samples=({"lr": 1e-2, "reset_interval": 4, "warmup_steps": 2, "clip_delay": 2},
                 {"lr": 1e-2, "reset_interval": 4, "warmup_steps": 2, "clip_delay": 2, "density": 0.5}),
        ids=("dense", "sparse"),
        invalid=(({"density": 0.0}, "density"), ({"reset_interval": -1}, "reset_interval"),
                 ({"threshold": -1.0}, "threshold")),
        events=counted("total_step", "reset_interval"),
    ),
    OptimInfo(
        "stable-spam",
        samples=({"lr": 1e-2, "reset_interval": 3, "total_steps": LEARN_STEPS},),
        invalid=(({"gamma3": 1.0}, "gamma3"), ({"eta_min": 1.5}, "eta_min"), ({"total_steps": 0}, "total_steps")),
        events=counted("total_step", "reset_interval"),
    ),
    OptimInfo(
        "low-rank",
        samples=({"lr": 1e-2, "rank": 4, "alpha": 1.0},),
        invalid=(({"rank": 0}, "rank"), ({"alpha": 0.0}, "alpha")),
    ),
    OptimInfo(
        "sltrain",
        samples=({"lr": 1e-2, "rank": 4, "density": 0.1},),
        invalid=(({"density": 1.5}, "density"), ({"rank": 0}, "rank")),
    ),
    OptimInfo(
        "relora",
        samples=({"lr": 1e-2, "rank": 4, "relora_steps": 2, "restart_warmup_steps": 1},),
        invalid=(({"relora_steps": 0}, "relora_steps"), ({"prune_ratio": 1.0}, "prune_ratio"),
                 ({"relora_steps": 2, "restart_warmup_steps": 3}, "restart_warmup_steps")),
        # a merge adds B·A into the frozen W: the only time W changes
        events=lambda model, opt: (fingerprint(m.weight for m in opt.modules),),
    ),
    OptimInfo(
        "loro",
        samples=({"lr": 3e-2, "rank": 4, "exact_every": 2},),
        invalid=(({"rank": 33}, "rank"), ({"refresh": "x"}, "refresh"), ({"exact_every": 0}, "exact_every")),
        default_build="rank",
        events=counted("t", "exact_every"),
    ),
    OptimInfo(
        "fira",
        samples=({"rank": 4, "update_proj_gap": 2, "weight_decay": 0.1}, {"rank": 3, "update_proj_gap": 2,
                                                                         "proj_type": "reverse_std", "exact_residual": True}),
        ids=("std", "reverse_std-exact"),
        invalid=(({"proj_type": "full"}, "proj_type"), ({"exact_residual": 1}, "exact_residual"), ({"rank": 33}, "rank")),
        default_build="rank",
        events=projectors,
    ),
    OptimInfo(
        "golore",
        # the switch at step 0.5 * 6 = 3: SVD refreshes at steps 0 and 2, a random one at 4
        samples=({"rank": 4, "update_proj_gap": 2, "rand_ratio": 0.5, "total_steps": STEPS},),
        invalid=(({"total_steps": None}, "total_steps"), ({"total_steps": 0}, "total_steps"),
                 ({"rand_ratio": 1.5}, "rand_ratio"), ({"project_momentum": 1}, "project_momentum")),
        default_build="rank",
        events=golore_events,
    ),
    OptimInfo(
        "galore-layerwise",
        samples=({"rank": 4, "update_proj_gap": 2, "weight_decay": 0.1},),
        invalid=(({"accumulation_steps": 0}, "accumulation_steps"), ({"rank": 33}, "rank")),
        default_build="rank",
        events=projectors,
    ),
)


def info(name: str) -> OptimInfo:
    return next(i for i in OPTIM_DB if i.name == name)


def sample_params() -> list[tuple[str, dict[str, Any], str]]:
    """(method, sample, id) for every sample of every entry: what the shared tests parametrize over."""
    return [(i.name, s, sid) for i in OPTIM_DB for s, sid in zip(i.samples, i.sample_ids())]
