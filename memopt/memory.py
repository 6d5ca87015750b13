"""Memory accounting: the exact bytes an optimizer holds between steps.

`optimizer_state_bytes(opt)` walks everything the optimizer object refers to
(its `state`, its other attributes, inner optimizers, plain objects such as the
authors' projector class) and sums the bytes of every tensor storage found,
each storage once (keyed by `untyped_storage().data_ptr()`), so views and shared
tensors are not double counted while a view that pins a larger storage is
charged for the whole storage it keeps alive. The parameters themselves (and
anything sharing their storage, e.g. a gradient view) are the model's, not the
optimizer's, and are left out, as are modules the optimizer might refer to.
"The parameters" are those of the outermost optimizer: an inner optimizer that
steps copies of them (BAdam's fp32 masters of the active block) holds those
copies, and they are counted. A tensor subclass that wraps others (torchao's
quantized states: codes, scales, quantization map) is charged for what it wraps.

`expected_state_bytes(name, model, **hp)` is each method's formula (registry).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from memopt.optim import registry


def _param_storages(opt: torch.optim.Optimizer) -> set[int]:
    ptrs: set[int] = set()
    for group in opt.param_groups:
        for p in group["params"]:
            ptrs.add(p.untyped_storage().data_ptr())
    return ptrs


def _walk(obj: Any, visited: set[int], storages: dict[int, int], skip: set[int]) -> None:
    if id(obj) in visited or isinstance(obj, (nn.Module, str, bytes, int, float, bool, type(None))):
        return
    visited.add(id(obj))
    if isinstance(obj, torch.Tensor) and is_traceable_wrapper_subclass(obj):
        # a wrapper has no storage of its own (reading it raises): its inner tensors hold the bytes
        for name in obj.__tensor_flatten__()[0]:
            _walk(getattr(obj, name), visited, storages, skip)
        return
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        ptr = storage.data_ptr()
        if ptr and ptr not in skip:
            storages[ptr] = max(storages.get(ptr, 0), storage.nbytes())
        return
    if isinstance(obj, torch.optim.Optimizer):
        inner_skip = skip or _param_storages(obj)  # the outermost optimizer's parameters are the model's
        _walk(obj.state, visited, storages, inner_skip)
        for key, value in vars(obj).items():
            if key not in ("param_groups", "state"):
                _walk(value, visited, storages, inner_skip)
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            _walk(k, visited, storages, skip)
            _walk(v, visited, storages, skip)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            _walk(v, visited, storages, skip)
    elif hasattr(obj, "__dict__") and not callable(obj):
        _walk(vars(obj), visited, storages, skip)


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of every tensor storage the optimizer holds (parameters excluded), each storage once."""
    storages: dict[int, int] = {}
    _walk(opt, set(), storages, set())
    return sum(storages.values())


def expected_state_bytes(name: str, model: nn.Module, **hp: Any) -> int:
    """The registered formula for method `name` (defaults merged with `hp`)."""
    return registry.expected_state_bytes(name, model, **hp)
