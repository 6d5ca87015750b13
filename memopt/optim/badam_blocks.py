"""BAdam (Luo et al., arXiv 2404.02827): block coordinate descent with Adam, the authors' `badam.BlockOptimizer`
(package badam) wrapped around torch's AdamW. The model is cut into blocks (one per transformer layer, plus
the embeddings and "lm_head and the rest" when included); one block at a time is trainable, the others have
requires_grad=False (no gradient, no state), and every `switch_block_every` steps the next block takes over
with fresh Adam moments (order: descending, ascending, random reshuffling, or fixed). BlockLLM's nearest peer:
whole tensors, chosen by a fixed cycle instead of by gradient norm.

Defaults are the class's (descending order, every 50 steps, embeddings and lm_head left out: its fine-tuning
setting; from random init they stay random, so runs from scratch want include_embedding and include_lm_head),
with the registry's Adam defaults (lr 1e-3, weight decay 0). What the class does that a reader may not expect:
- the active block trains on an fp32 copy (the authors' mixed-precision design); on fp32 weights the copy
  duplicates the block, and it is counted as optimizer state (it is held by the optimizer, not the model);
- the first block gets `switch_block_every - 1` steps (it switches when (step + 1) % every == 0);
- norm weights decay like matrices (its test for norms looks at the tensor's type, never a layer's);
- random order draws from torch's global generator (the engine's checkpoint restores it).

Resuming: BAdam's own state_dict is only the active block's moments. The subclass here saves, beside them,
the active block, the next one, the random order left, the step count and the fp32 copies, and restores the
block on load, so a run resumes bit for bit (checkpoint_test.py).

State held between steps (exact once the active block has stepped; right after a switch its moments are not
allocated yet): per tensor of the active block (the model's trainable tensors once built), with n elements,
an fp32 copy (4n), two fp32 moments (8n) and a 0-d fp32 step (4).
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from memopt.optim.adamw import trainable
from memopt.optim.checks import check, check_bool, check_choice, check_range
from memopt.optim.config import AdamConfig
from memopt.optim.registry import MethodSpec, register

SWITCH_MODES = ("descending", "ascending", "random", "fixed")


@dataclass(frozen=True, kw_only=True)
class BAdamConfig(AdamConfig):
    switch_block_every: int = 50
    switch_mode: str = "descending"
    start_block: int | None = None  # None: the mode's first (the last block when descending)
    include_embedding: bool = False
    include_lm_head: bool = False  # the lm_head and every tensor outside the layers (the final norm)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("switch_block_every", self.switch_block_every, 1, integer=True)
        check_choice("switch_mode", self.switch_mode, SWITCH_MODES)
        if self.start_block is not None:
            check_range("start_block", self.start_block, 0, integer=True)
        check_bool("include_embedding", self.include_embedding)
        check_bool("include_lm_head", self.include_lm_head)


@functools.cache
def block_optimizer_class() -> type[torch.optim.Optimizer]:
    """badam.BlockOptimizer, resumable (imported on first use: badam imports transformers, which memopt.optim
    does not)."""
    from badam import BlockOptimizer

    class ResumableBlockOptimizer(BlockOptimizer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            del self.state_dict  # BAdam points it at the base optimizer's: the active block's moments alone

        def switch_trainable_params(self, verbose: int | None = None) -> None:
            # BAdam's own default (verbose=1) prints every switch whatever the optimizer's verbosity
            self.active_block = self.current_block_idx
            super().switch_trainable_params(verbose)

        def state_dict(self) -> dict[str, Any]:
            sd = torch.optim.Optimizer.state_dict(self)  # the outer groups: the scheduler's lr
            sd["badam"] = {
                "base": self.base_optimizer.state_dict(), "global_step": self.global_step,
                "active_block": self.active_block, "next_block": self.current_block_idx,
                "block_order": list(getattr(self, "block_order", [])), "masters": list(self.param_idx2hp.values()),
            }
            return sd

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            sd = dict(state_dict)
            saved = sd.pop("badam")
            torch.optim.Optimizer.load_state_dict(self, sd)
            self.current_block_idx = saved["active_block"]
            self.switch_trainable_params()  # the saved block trainable again, fresh fp32 copies of it
            with torch.no_grad():
                for master, value in zip(self.param_idx2hp.values(), saved["masters"], strict=True):
                    master.copy_(value)
            self.base_optimizer.load_state_dict(saved["base"])
            self.current_block_idx, self.global_step = saved["next_block"], saved["global_step"]
            if self.switch_mode == "random":
                self.block_order = list(saved["block_order"])

    return ResumableBlockOptimizer


def build_badam(model: nn.Module, config: BAdamConfig) -> torch.optim.Optimizer:
    c = config
    cls = block_optimizer_class()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    blocks = cls.infer_param_groups(None, [n for n, _ in named], c.include_embedding, c.include_lm_head)  # uses no self
    check(len(blocks) > 0, "model", type(model).__name__, "a model with `layers.N.` parameters (BAdam's blocks)")
    if c.start_block is not None:
        check_range("start_block", c.start_block, 0, len(blocks), integer=True)
    base = torch.optim.AdamW(trainable(model), lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay,
                             foreach=True)
    with warnings.catch_warnings():
        # fp32 weights: BAdam warns that its fp32 copy saves nothing then; the copy is counted in the state
        warnings.filterwarnings("ignore", message="BAdam expect model to be loaded in fp16/bf16")
        return cls(base, named, block_prefix_list=blocks, switch_block_every=c.switch_block_every,
                   start_block=c.start_block, switch_mode=c.switch_mode, verbose=0)


def badam_state_bytes(model: nn.Module, config: BAdamConfig) -> int:
    return sum(12 * p.numel() + 4 for p in trainable(model))  # the active block: BAdam froze the rest


BADAM = register(
    MethodSpec(
        name="badam",
        config=BAdamConfig,
        builder=build_badam,
        state_bytes=badam_state_bytes,
        summary="BAdam: Adam on one block (transformer layer) at a time, blocks switched every K steps",
        paper="arXiv 2404.02827",
    )
)
