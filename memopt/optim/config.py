"""Each optimizer family declares its hyperparameters once, as a frozen dataclass.

The registry's defaults are the field defaults (`MethodSpec.defaults`), the builder
and the state-bytes formula read the fields of one checked instance, and the
optimizer classes take their defaults from the same declaration wherever the values
agree (GaLoreAdamW's lr is the authors' class default 1e-3, the registry's 0.01 is
their scripts'; both are kept).

A subclass adds fields, may re-declare a default, and extends `__post_init__` by
calling super's first, so a family extends its parent's checks instead of repeating
them (Distributed Shampoo's config style). Every field is checked on creation: a bad
value raises `ValueError("invalid <name>: <value>; valid: ...")` (memopt.optim.checks).
Checks that need the model (a rank against a weight's smaller dimension) stay where
the model is known: the builder, the optimizer, the state-bytes formula.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from memopt.optim.checks import check_adam_args


@dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """Base of every method's declaration; no fields of its own."""

    def __post_init__(self) -> None:
        pass

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {f.name: f.default for f in fields(cls)}

    def as_dict(self) -> dict[str, Any]:
        """The fields as keyword arguments (no copies: the values are immutable)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def _normalize(self, name: str, value: Any) -> None:
        # frozen: the one sanctioned write, in __post_init__ (a list from JSON becomes the declared tuple)
        object.__setattr__(self, name, value)


@dataclass(frozen=True, kw_only=True)
class AdamConfig(OptimizerConfig):
    """The Adam block every method starts with: torch.optim.AdamW's arguments and checks
    (lr > 0; the registry never trains with lr 0, whatever a class accepts)."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_adam_args(self.lr, self.betas, self.eps, self.weight_decay)
        self._normalize("betas", tuple(self.betas))
