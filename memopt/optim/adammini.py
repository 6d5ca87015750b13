"""Adam-mini (Zhang et al., arXiv 2406.16793): the authors' `adam_mini.Adam_mini` (package adam-mini), which
keeps Adam's first moment and replaces the second by one mean square per block: per head for queries and
keys, per output neuron for values, attention output, MLP, embeddings and lm_head, one per other tensor
(norms); biases keep Adam's full second moment. The blocks come from the parameter names (the authors'
name lists) and from the model's hidden size and head counts, read off `model.config` (a module without
one gets the class defaults, which only matter for q_proj/k_proj names).

Defaults are the class's, weight_decay 0 as the registry's adamw (norms and biases never decay: the
authors'). One correction: Adam-mini 1.1.1 takes `torch.cuda.device_count()` for the number of training
processes and, above 1, all-gathers in its first step; the builder sets the process count torch.distributed
actually has (1 without it), so a single process on a multi-GPU machine does not hang or fail.

State, per trainable tensor of n elements (element size s, the parameter's): the first moment (n) plus
n for a bias, n / head_numel for q/k (head_numel = hidden² / heads), the row count for the neuron blocks,
1 otherwise; all times s. Step counters are Python ints.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from memopt.optim.config import AdamConfig
from memopt.optim.registry import MethodSpec, register


@dataclass(frozen=True, kw_only=True)
class AdamMiniConfig(AdamConfig):
    pass


def build_adam_mini(model: nn.Module, config: AdamMiniConfig) -> torch.optim.Optimizer:
    from adam_mini import Adam_mini  # imported here: it loads torch.distributed's tensor package (seconds)

    c, shape = config, {}
    model_config = getattr(model, "config", None)
    if model_config is not None:
        shape = dict(dim=model_config.hidden_size, n_heads=model_config.num_attention_heads,
                     n_kv_heads=getattr(model_config, "num_key_value_heads", None))
    optimizer = Adam_mini(list(model.named_parameters()), lr=c.lr, betas=c.betas, eps=c.eps,
                          weight_decay=c.weight_decay, verbose=False, **shape)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    optimizer.world_size = torch.distributed.get_world_size() if distributed else 1
    return optimizer


def second_moment_elements(optimizer: torch.optim.Optimizer, name: str, p: torch.Tensor) -> int:
    """How many second-moment entries Adam_mini.step gives the tensor `name` (its branches, in its order)."""
    def named(names: set[str]) -> bool:
        return any(k in name for k in names)
    o = optimizer
    if named(o.adam_block_names):
        return p.numel()
    if named(o.wqk_names):
        return p.numel() // o.head_numel
    if named(o.embd_names | o.output_names | o.wv_names | o.mlp_names | o.attn_proj_names):
        return p.shape[0]
    return 1


def adam_mini_state_bytes(model: nn.Module, config: AdamMiniConfig) -> int:
    optimizer = build_adam_mini(model, config)  # its name lists and head size decide the blocks; no state yet
    total = 0
    for group in optimizer.param_groups:
        (p,) = group["params"]
        total += (p.numel() + second_moment_elements(optimizer, group["name"], p)) * p.element_size()
    return total


ADAM_MINI = register(
    MethodSpec(
        name="adam-mini",
        config=AdamMiniConfig,
        builder=build_adam_mini,
        state_bytes=adam_mini_state_bytes,
        summary="Adam-mini: Adam's first moment, one second-moment scalar per head / neuron / tensor block",
        paper="arXiv 2406.16793",
    )
)
