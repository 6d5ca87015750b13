"""One registry: a method name -> how to build its optimizer and what its state costs.

Each method module registers a `MethodSpec`. `build(name, model, **overrides)`
merges the method's defaults with the overrides (unknown keys are an error),
and calls the builder, which may reparameterize `model` in place before it
returns the optimizer (Low-Rank, ReLoRA, ... do). The training loop always
calls `optimizer.step(closure)` with a closure that returns the step's loss.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

Builder = Callable[..., torch.optim.Optimizer]
StateBytes = Callable[..., int]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    builder: Builder  # builder(model, **hyperparameters) -> optimizer
    state_bytes: StateBytes  # state_bytes(model, **hyperparameters) -> bytes held between steps
    defaults: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    paper: str = ""


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
    """The method's defaults with `overrides` applied; an unknown key is a ValueError."""
    s = spec(name)
    unknown = sorted(set(overrides) - set(s.defaults))
    if unknown:
        raise ValueError(
            f"method {name!r} has no hyperparameter {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(sorted(s.defaults))}"
        )
    return {**s.defaults, **overrides}


def build(name: str, model: nn.Module, **overrides: Any) -> torch.optim.Optimizer:
    return spec(name).builder(model, **hyperparameters(name, **overrides))


def expected_state_bytes(name: str, model: nn.Module, **overrides: Any) -> int:
    return spec(name).state_bytes(model, **hyperparameters(name, **overrides))
