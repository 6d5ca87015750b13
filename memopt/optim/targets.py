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
    targets: list[nn.Parameter] = []
    ids: set[int] = set()
    for _, m in target_linears(model, keys):
        # a weight shared by two target linears (tied) is listed once: a param group must not repeat it
        if m.weight.requires_grad and id(m.weight) not in ids:
            ids.add(id(m.weight))
            targets.append(m.weight)
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    return targets, rest
