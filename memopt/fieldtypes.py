"""The parameter types whose text the command line hands over as typed (pydantic-settings' NoDecode), with
their parsers, and the checks that lists of values share. memopt/config.py declares the fields."""
from __future__ import annotations

import ast
import math
from typing import Annotated, Any, Iterator

from pydantic import BeforeValidator
from pydantic_settings import NoDecode


def split_commas(value: Any) -> Any:
    return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value


def top_level_split(text: str) -> list[str]:
    """Split on commas outside brackets and quotes, so `adamw.betas=(0.9,0.95)` stays one item."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def _assignments(value: str) -> Iterator[tuple[str, str, str]]:
    """(item, KEY, TEXT) for each `KEY=TEXT` of a comma-separated list; KEY is "" where there is no `=`."""
    for item in filter(None, (part.strip() for part in top_level_split(value))):
        key, sep, text = item.partition("=")
        yield item, key.strip() if sep else "", text.strip()


def parse_method_args(value: Any) -> Any:
    """`galore.update_proj_gap=50,blockllm.patience=20` -> {"galore": {"update_proj_gap": 50}, ...}."""
    if not isinstance(value, str):
        return value
    result: dict[str, dict[str, Any]] = {}
    for item, key, text in _assignments(value):
        method, _, name = key.partition(".")
        if not method or not name:
            raise ValueError(f"{item!r} is not METHOD.NAME=VALUE")
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            parsed = text
        result.setdefault(method, {})[name] = parsed
    return result


def parse_method_lr_grids(value: Any) -> Any:
    """`galore=[3e-3,1e-2],blockllm=1e-3` -> {"galore": [0.003, 0.01], "blockllm": [0.001]}."""
    if not isinstance(value, str):
        return value
    result: dict[str, Any] = {}
    for item, method, text in _assignments(value):
        if not method:
            raise ValueError(f"{item!r} is not METHOD=[LR,...]")
        try:
            grid = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(f"{item!r}: {text!r} is not a learning rate or a list [LR,...]") from None
        result[method] = list(grid) if isinstance(grid, (list, tuple)) else [grid]
    return result


MethodNames = Annotated[list[str], NoDecode, BeforeValidator(split_commas)]
MethodArgs = Annotated[dict[str, dict[str, Any]], NoDecode, BeforeValidator(parse_method_args)]
LrGrid = Annotated[list[float], NoDecode, BeforeValidator(split_commas)]
MethodLrGrids = Annotated[dict[str, list[float]], NoDecode, BeforeValidator(parse_method_lr_grids)]
Seeds = Annotated[list[int], NoDecode, BeforeValidator(split_commas)]


def check_lr_grid(grid: list[float], what: str = "") -> list[float]:
    """A grid of learning rates: not empty, every value positive and finite, none twice."""
    if not grid:
        raise ValueError(f"{what}empty; give at least one learning rate, e.g. 1e-3,3e-3,1e-2 (or --sweep_steps 0: no sweep)")
    bad = [lr for lr in grid if not (lr > 0 and math.isfinite(lr))]
    if bad:
        raise ValueError(f"{what}got {bad[0]:g}; every learning rate must be a positive finite number")
    check_given_once(grid, what, shown=lambda lr: f"{lr:g}")
    return grid


def check_given_once(values: list[Any], what: str = "", why: str = "", shown: Any = str) -> None:
    """ValueError naming the values given more than once."""
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{what}{', '.join(map(shown, repeated))} given more than once{why}")
