"""Argument checks shared by every optimizer of the family, one message shape:

    ValueError: invalid <name>: <value>; valid: <what is valid>

`check` is the primitive; `check_range`, `check_choice`, `check_bool` and
`check_int` word the valid part for the common cases; `check_adam_args` is the
lr/betas/eps/weight_decay block that every Adam-style constructor starts with
(torch.optim.AdamW's checks).
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Iterable


def check(ok: bool, name: str, value: Any, valid: str) -> None:
    """ValueError naming `name`, the value given and what is valid, unless `ok`."""
    if not ok:
        raise ValueError(f"invalid {name}: {value!r}; valid: {valid}")


def _num(x: float) -> str:
    # "0" and "1", not "0.0" and "1.0": the ranges read like the docs ("0 <= sparsity < 1")
    return str(int(x)) if isinstance(x, numbers.Real) and math.isfinite(x) and float(x).is_integer() else repr(x)


def describe_range(name: str, lo: float, hi: float, lo_open: bool = False, hi_open: bool = True) -> str:
    left = f"{_num(lo)} {'<' if lo_open else '<='} " if lo != -math.inf else ""
    right = f" {'<' if hi_open else '<='} {_num(hi)}" if hi != math.inf else ""
    if left and not right:
        return f"{name} {'>' if lo_open else '>='} {_num(lo)}"
    return f"{left}{name}{right}"


def is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def check_range(
    name: str, value: Any, lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = True,
    integer: bool = False,
) -> None:
    """lo <(=) value <(=) hi (closed below, open above by default); `integer` also demands an int."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and (is_int(value) or not integer)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    valid = describe_range(name, lo, hi, lo_open, hi_open)
    check(ok, name, value, f"an int, {valid}" if integer else valid)


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    choices = tuple(choices)
    check(value in choices, name, value, ", ".join(c if isinstance(c, str) else repr(c) for c in choices))


def check_bool(name: str, value: Any) -> None:
    check(isinstance(value, bool), name, value, "True or False")


def check_int(name: str, value: Any) -> None:
    check(is_int(value), name, value, "an int")


def check_adam_args(lr: float, betas: Any, eps: float, weight_decay: float, zero_lr_ok: bool = False) -> None:
    """torch.optim.AdamW's checks. lr must be > 0 unless `zero_lr_ok` (the modules that started out
    with torch's own `0 <= lr` keep it, so no constructor changes what it accepts)."""
    check_range("lr", lr, 0.0, lo_open=not zero_lr_ok)
    check(isinstance(betas, (tuple, list)) and len(betas) == 2, "betas", betas, "a pair (beta1, beta2), each in [0, 1)")
    for i, b in enumerate(betas):
        check_range(f"betas[{i}]", b, 0.0, 1.0)
    check_range("eps", eps, 0.0)
    check_range("weight_decay", weight_decay, 0.0)
