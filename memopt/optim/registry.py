"""One registry: a method name -> its hyperparameter declaration, how to build its
optimizer, what its state costs, and what the training engine must know about it.

Each method module registers a `MethodSpec`. `build(name, model, **overrides)`
merges the method's defaults with the overrides (unknown keys are an error), checks
them by creating the method's config (memopt.optim.config), and calls the builder,
which may reparameterize `model` in place before it returns the optimizer (Low-Rank,
ReLoRA, ... do). The training loop always calls `optimizer.step(closure)` with a
closure that returns the step's loss.

A new method is its module (a config dataclass extending config.AdamConfig or a
family's config, the optimizer class, `builder(model, config)`,
`state_bytes(model, config)`, one `register(MethodSpec(...))`), an import line in
memopt/optim/__init__.py, an entry in optim_db.py (without one contract_test.py
fails) and tests of its own semantics; the shared tests cover the rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from memopt.optim.config import OptimizerConfig

Builder = Callable[[nn.Module, Any], torch.optim.Optimizer]
StateBytes = Callable[[nn.Module, Any], int]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config: type[OptimizerConfig]  # the hyperparameters, their defaults and checks
    builder: Builder  # builder(model, config) -> optimizer
    state_bytes: StateBytes  # state_bytes(model, config) -> bytes held between steps
    summary: str = ""
    paper: str = ""
    # What the training engine must know (memopt.optim.optim_db's contract tests hold each to its word):
    needs_closure: bool = False  # step() must get a closure returning the loss (it reads the loss)
    steps_in_backward: bool = False  # updates run inside backward; step() only counts, no gradients remain after
    reparameterizes: bool = False  # the builder swaps modules of the model (export with reparam.merged_state_dict)

    @property
    def defaults(self) -> dict[str, Any]:
        """The declared defaults as a plain dict (a fresh one each time: nobody can edit the declaration)."""
        return self.config.defaults()


_REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"method {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def methods() -> list[str]:
    return list(_REGISTRY)


def spec(name: str) -> MethodSpec:
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def hyperparameters(name: str, **overrides: Any) -> dict[str, Any]:
    """The method's defaults with `overrides` applied; an unknown key is a ValueError. The values are not
    checked here (a method may need a run fact such as total_steps before its defaults are valid)."""
    defaults = spec(name).defaults
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(
            f"method {name!r} has no hyperparameter {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(sorted(defaults))}"
        )
    return {**defaults, **overrides}


def method_config(name: str, **overrides: Any) -> OptimizerConfig:
    """The method's checked config: defaults with `overrides`; a bad value is a ValueError naming it."""
    return spec(name).config(**hyperparameters(name, **overrides))


def build(name: str, model: nn.Module, **overrides: Any) -> torch.optim.Optimizer:
    return spec(name).builder(model, method_config(name, **overrides))


def expected_state_bytes(name: str, model: nn.Module, **overrides: Any) -> int:
    return spec(name).state_bytes(model, method_config(name, **overrides))
