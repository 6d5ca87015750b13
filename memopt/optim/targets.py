"""Which weights the low-rank / sparse methods act on: the 2-D weights of the
nn.Linear modules whose qualified names contain `attn` or `mlp` (the authors'
convention in GaLore, APOLLO, SPAM and the benchmark repo); everything else
(embeddings, lm_head, norms, biases) stays with plain Adam."""
from __future__ import annotations

from typing import Iterable

from torch import nn

TARGET_KEYS = ("attn", "mlp")


def target_linears(model: nn.Module, keys: Iterable[str] = TARGET_KEYS) -> list[tuple[str, nn.Linear]]:
    keys = tuple(keys)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and any(k in n for k in keys)]


def split_params(model: nn.Module, keys: Iterable[str] = TARGET_KEYS) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(target weights, every other trainable parameter), each in model order."""
    targets = [m.weight for _, m in target_linears(model, keys) if m.weight.requires_grad]
    ids = {id(p) for p in targets}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    return targets, rest


def check(name: str, value: float, lo: float, hi: float, lo_open: bool = False, hi_open: bool = True) -> None:
    """ValueError naming the valid range unless lo <(=) value <(=) hi."""
    ok_lo = value > lo if lo_open else value >= lo
    ok_hi = value < hi if hi_open else value <= hi
    if not (ok_lo and ok_hi):
        rng = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ValueError(f"{name} must be in {rng}, got {value!r}")
