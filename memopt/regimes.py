"""The two training regimes, and what each method takes by default in each.

- `pretrain`: the model's architecture from random init, trained on the data (the seeds' "from scratch"
  runs; the regime of the GaLore, APOLLO and benchmark papers' C4 tables).
- `finetune`: a pretrained model adapted to the data, scored also by answer accuracy. A preset has no
  pretrained weights, so the flow first makes a base model for it: AdamW pretraining on a general-text
  corpus (the embedded default is memopt/textgen.py, not the task), cached (tasks/base.py).

Where the authors' code differs between the regimes, each regime takes the authors' own defaults
(METHODS.md); everything else is the registry's (the method's paper/package defaults) in both:
- BlockLLM: fine-tuning is their packaged class (tensors named `embed`/`lm_head` frozen: the registry's
  defaults); pretraining is their C4 path (`adjust_parameters_selective_weighted`), which freezes
  nothing by name: every tensor is a candidate. In both the element budget counts the candidates only.
"""
from __future__ import annotations

import typing
from typing import Any

Regime = typing.Literal["pretrain", "finetune"]
REGIMES: tuple[str, ...] = typing.get_args(Regime)

# regime -> optimizer (a registry name) -> hyperparameters that differ from the registry's defaults
REGIME_HYPERPARAMETERS: dict[str, dict[str, dict[str, Any]]] = {
    "pretrain": {"blockllm": {"frozen_patterns": ()}},
    "finetune": {},
}

# A method "learns" in a run when its final validation loss is at most this share of its initial one.
LEARNING_BAR = 0.7

# Why a method does not clear LEARNING_BAR in a regime, where the reason is known (the report prints it
# next to the method's row). Measured on the embedded default; BENCHMARKS.md (quality) has the figures.
CANNOT_LEARN: dict[tuple[str, str], str] = {
    ("blockllm", "pretrain"): (
        "BlockLLM updates about 10% of the elements at a time (sparsity 0.9), and re-selects them only every "
        "update_freq = 1000 steps: from random init the other 90% stay random through a short run, so the loss "
        "falls slowly. The method was made for fine-tuning, where the frozen part is already trained."),
}


def regime_hyperparameters(regime: str, optimizer: str) -> dict[str, Any]:
    """What `optimizer` takes in `regime` beyond the registry's defaults."""
    if regime not in REGIME_HYPERPARAMETERS:
        raise ValueError(f"unknown regime {regime!r}; regimes: {', '.join(REGIMES)}")
    return dict(REGIME_HYPERPARAMETERS[regime].get(optimizer, {}))


def why_not_learning(method: str, regime: str, ratio: float | None) -> str:
    """Words for a method whose final ÷ initial validation loss `ratio` misses LEARNING_BAR; "" when it learns."""
    if ratio is None or ratio <= LEARNING_BAR:
        return ""
    known = CANNOT_LEARN.get((method, regime))
    measured = f"final ÷ initial validation loss {ratio:.2f} > {LEARNING_BAR}"
    return f"{measured}: {known}" if known else f"{measured}: it did not learn clearly within this budget"
