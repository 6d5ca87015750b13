"""AdamW with low-bit moments, from their authors' packages (nothing written again here):

- `adamw-8bit`: bitsandbytes' `AdamW8bit` (Dettmers et al., arXiv 2110.02861), the `adamw_bnb_8bit` of
  transformers' Trainer; `paged=True` takes `PagedAdamW8bit`, which pages its state through CUDA unified
  memory and so needs CUDA (on a CPU bitsandbytes silently falls back to unpaged state: refused instead).
- `adamw-ao8bit`, `adamw-ao4bit`: torchao's `AdamW8bit` / `AdamW4bit` (arXiv 2110.02861, 2309.01507), the
  `adamw_torch_8bit` / `adamw_torch_4bit` of transformers' Trainer; the step is a `torch.compile`d kernel
  per parameter shape (compiled on first use: the first steps are slow, on CPU too).

Every default but weight_decay is the package's; weight_decay is 0, as the registry's `adamw` (the classes'
own default is 0.01), so the three differ from `adamw` only in how they hold the moments.

State held between steps, per trainable tensor of n elements (element size s), exactly as the packages
allocate it (memopt/memory_test.py measures it):
  bitsandbytes, n >= min_8bit_size: two uint8 code tensors (2n) + two fp32 absmax per 256-element block
                                    (8 ceil(n / 256)); smaller tensors: two fp32 moments (8n)
                                    + the two 256-entry fp32 quantization maps the optimizer shares (2048)
  torchao, n >= 4096 and block_size | n: per moment, codes (n for 8-bit, n / 2 for 4-bit), one fp32 scale
                                    per block (4n / block_size) and its own quantization map (256 or 16 fp32);
                                    other tensors: two moments of the parameter's dtype (2ns)
                                    + a 0-d fp32 step per tensor (4)
The packages import lazily (in the builders): they cost an import second and a CUDA probe that only runs
using them should pay.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from memopt.optim.adamw import trainable
from memopt.optim.checks import check, check_bool, check_range
from memopt.optim.config import AdamConfig
from memopt.optim.registry import MethodSpec, register

BNB_BLOCK = 256  # bitsandbytes' block size for 8-bit optimizer states (init_state and its kernels)
BNB_MAP_ENTRIES = 256  # one fp32 entry per 8-bit code, one signed and one unsigned map
TORCHAO_MIN_SIZE = 4096  # torchao quantizes a moment only from this many elements (bitsandbytes' default)


@dataclass(frozen=True, kw_only=True)
class AdamW8bitConfig(AdamConfig):
    min_8bit_size: int = 4096  # bitsandbytes': smaller tensors keep 32-bit moments
    paged: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("min_8bit_size", self.min_8bit_size, 1, integer=True)
        check_bool("paged", self.paged)
        check(not self.paged or torch.cuda.is_available(), "paged", self.paged,
              "False on a machine without CUDA (bitsandbytes' paged optimizers page their state through CUDA "
              "unified memory)")


@functools.cache
def bnb_adamw_8bit(paged: bool) -> type[torch.optim.Optimizer]:
    """bitsandbytes' class (imported on first use), whose load_state_dict shares the quantization maps again.

    A checkpoint holds each tensor's copy of the two maps; a fresh optimizer shares one pair (and bitsandbytes'
    own load_state_dict runs no load hooks), so a resumed run would hold a copy per tensor without this."""
    import bitsandbytes as bnb

    class AdamW8bit(bnb.optim.PagedAdamW8bit if paged else bnb.optim.AdamW8bit):
        def load_state_dict(self, state_dict: dict[str, Any], move_to_device: bool = True) -> None:
            super().load_state_dict(state_dict, move_to_device)
            for state in self.state.values():
                for key, name in (("qmap1", "dynamic"), ("qmap2", "udynamic")):
                    if key in state and torch.equal(state[key].cpu(), self.name2qmap[name].cpu()):
                        state[key] = self.name2qmap[name] = self.name2qmap[name].to(state[key].device)

    return AdamW8bit


def build_adamw_8bit(model: nn.Module, config: AdamW8bitConfig) -> torch.optim.Optimizer:
    c = config
    return bnb_adamw_8bit(c.paged)(trainable(model), lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay,
                                   min_8bit_size=c.min_8bit_size)


def adamw_8bit_state_bytes(model: nn.Module, config: AdamW8bitConfig) -> int:
    total = 2 * BNB_MAP_ENTRIES * 4
    for p in trainable(model):
        n = p.numel()
        total += 8 * n if n < config.min_8bit_size else 2 * n + 8 * math.ceil(n / BNB_BLOCK)
    return total


@dataclass(frozen=True, kw_only=True)
class TorchAOAdamWConfig(AdamConfig):
    block_size: int = 256  # torchao AdamW8bit's
    bf16_stochastic_round: bool = False  # bf16 weights only: stochastic rounding of the update

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("block_size", self.block_size, 1, integer=True)
        check_bool("bf16_stochastic_round", self.bf16_stochastic_round)


@dataclass(frozen=True, kw_only=True)
class TorchAOAdamW4bitConfig(TorchAOAdamWConfig):
    block_size: int = 128  # torchao AdamW4bit's

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.block_size % 2 == 0, "block_size", self.block_size, "an even int (two 4-bit codes per byte)")


def torchao_builder(bits: int):
    def build(model: nn.Module, config: TorchAOAdamWConfig) -> torch.optim.Optimizer:
        from torchao.optim import AdamW4bit, AdamW8bit

        c = config
        return {8: AdamW8bit, 4: AdamW4bit}[bits](
            trainable(model), lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay,
            block_size=c.block_size, bf16_stochastic_round=c.bf16_stochastic_round)
    return build


def torchao_state_bytes(bits: int):
    def state_bytes(model: nn.Module, config: TorchAOAdamWConfig) -> int:
        bs, total = config.block_size, 0
        for p in trainable(model):
            n = p.numel()
            if n >= TORCHAO_MIN_SIZE and n % bs == 0:
                total += 2 * (n * bits // 8 + 4 * (n // bs) + 4 * 2**bits)
            else:
                total += 2 * n * p.element_size()
            total += 4  # step
        return total
    return state_bytes


ADAMW_8BIT = register(
    MethodSpec(
        name="adamw-8bit",
        config=AdamW8bitConfig,
        builder=build_adamw_8bit,
        state_bytes=adamw_8bit_state_bytes,
        summary="bitsandbytes AdamW8bit: block-wise 8-bit moments (paged=True: PagedAdamW8bit, CUDA only)",
        paper="arXiv 2110.02861",
    )
)
for _bits, _config in ((8, TorchAOAdamWConfig), (4, TorchAOAdamW4bitConfig)):
    register(
        MethodSpec(
            name=f"adamw-ao{_bits}bit",
            config=_config,
            builder=torchao_builder(_bits),
            state_bytes=torchao_state_bytes(_bits),
            summary=f"torchao AdamW{_bits}bit: block-wise {_bits}-bit moments, a torch.compile'd step",
            paper="arXiv 2110.02861" if _bits == 8 else "arXiv 2309.01507",
        )
    )
