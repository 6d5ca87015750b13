"""torch's fused Adam kernel for every Adam form the methods use, and the choice of kernel.

torch's fused kernel (`torch._fused_adam_`, what `torch.optim.AdamW(fused=True)` runs) reads
each parameter, gradient and moment once and writes them once; the foreach path makes about ten
passes (BENCHMARKS.md: several times slower per step on this CPU). The methods keep their own
forms of Adam, and the kernel computes each of them:
- torch's (AdamW, BlockLLM, Stable-SPAM): p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps), with the
  decoupled decay p *= 1 - lr*wd before;
- transformers' (the authors' code of the GaLore family, APOLLO, SPAM, LoRO): denominator
  sqrt(v) + eps, sqrt(bc2) in the step size. With eps' = eps/sqrt(bc2) the kernel's denominator is
  (sqrt(v) + eps)/sqrt(bc2): the same update (to rounding).
`adam_` applies a step to parameters; `adam_directions` returns the direction m / (sqrt(v) + eps)
instead, for methods that project or scale it themselves (the kernel run on zero buffers). Where torch has
no fused kernel (device, dtype) the same formula runs on foreach ops (`_foreach_adam_`), which the
tests also hold the kernel to.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
from torch.optim.optimizer import _default_to_fused_or_foreach


def torch_adamw_kernel(params: Iterable[torch.Tensor], fused: bool = True) -> dict[str, bool]:
    """torch.optim.AdamW's `fused`/`foreach` flags: the fused kernel where torch has one for these
    tensors (and `fused` asks for it), else foreach (torch's own default on CPU would be its
    single-tensor loop, about twice as slow as foreach)."""
    use_fused, _ = _default_to_fused_or_foreach(list(params), differentiable=False, use_fused=fused)
    return {"fused": use_fused, "foreach": not use_fused}


def has_fused_kernel(tensors: Iterable[torch.Tensor]) -> bool:
    return torch_adamw_kernel(tensors)["fused"]


def adam_(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], exp_avgs: Sequence[torch.Tensor],
          exp_avg_sqs: Sequence[torch.Tensor], steps: Sequence[int], *, lr: float, betas: tuple[float, float],
          eps: float, weight_decay: float = 0.0, transformers_eps: bool = False,
          lr_scales: Sequence[float] | None = None, grad_scales: Sequence[torch.Tensor] | None = None) -> None:
    """One Adam step on each tensor of the lists, in place.

    steps: each tensor's step count including this step (1 on its first; the caller keeps the counts).
    weight_decay: torch's decoupled decay, before the update. transformers_eps: the authors' denominator
    sqrt(v) + eps. lr_scales: a factor on lr per tensor. grad_scales: a 0-d float32 tensor per tensor that
    its gradient is divided by first; the kernel writes the divided gradient back into `grads`.
    """
    if not params:
        return
    beta1, beta2 = betas
    groups: dict[tuple, list[int]] = {}
    for i, (p, t) in enumerate(zip(params, steps)):
        key = (t, 1.0 if lr_scales is None else lr_scales[i], p.device, p.dtype, None if grad_scales is None else i)
        groups.setdefault(key, []).append(i)
    fused = has_fused_kernel(params)
    for (t, lr_scale, device, _, _), idx in groups.items():
        bc2_root = math.sqrt(1.0 - beta2**t)
        args = ([params[i] for i in idx], [grads[i] for i in idx], [exp_avgs[i] for i in idx],
                [exp_avg_sqs[i] for i in idx])
        group_lr, group_eps = lr * lr_scale, eps / bc2_root if transformers_eps else eps
        scale = None if grad_scales is None else grad_scales[idx[0]]
        if fused:
            step = torch.full((), float(t), dtype=torch.float32, device=device)  # read, not moved, by the kernel
            torch._fused_adamw_(*args, [], [step] * len(idx), lr=group_lr, beta1=beta1, beta2=beta2,
                                weight_decay=weight_decay, eps=group_eps, amsgrad=False, maximize=False,
                                grad_scale=scale, found_inf=None)
        else:
            _foreach_adam_(*args, t, lr=group_lr, betas=betas, eps=group_eps, weight_decay=weight_decay,
                           grad_scale=scale)


def _foreach_adam_(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
                   exp_avg_sqs: list[torch.Tensor], step: int, *, lr: float, betas: tuple[float, float], eps: float,
                   weight_decay: float, grad_scale: torch.Tensor | None) -> None:
    """The kernel's formula on foreach ops (torch's form; `adam_` passes the rescaled eps for transformers')."""
    beta1, beta2 = betas
    if grad_scale is not None:
        torch._foreach_div_(grads, grad_scale)
    if weight_decay != 0.0:
        torch._foreach_mul_(params, 1.0 - lr * weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denoms, math.sqrt(1.0 - beta2**step))
    torch._foreach_add_(denoms, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denoms, value=-lr / (1.0 - beta1**step))


def adam_directions(grads: Sequence[torch.Tensor], exp_avgs: Sequence[torch.Tensor], exp_avg_sqs: Sequence[torch.Tensor],
                    steps: Sequence[int], *, betas: tuple[float, float], eps: float) -> list[torch.Tensor]:
    """Update the moments as `adam_` does (transformers' form) and return, per tensor, the direction
    m / (sqrt(v) + eps) as a new tensor; the caller scales it by its step size (which may be 0)."""
    beta1, beta2 = betas
    # the kernel run on zero buffers with lr = -bc1/sqrt(bc2) leaves 0 + m / (sqrt(v) + eps) in them
    unit = [-(1.0 - beta1**t) / math.sqrt(1.0 - beta2**t) for t in steps]
    directions = [torch.zeros_like(m) for m in exp_avgs]
    adam_(directions, grads, exp_avgs, exp_avg_sqs, steps, lr=1.0, betas=betas, eps=eps, transformers_eps=True,
          lr_scales=unit)
    return directions


def transformers_step_size(lr: float, betas: tuple[float, float], step: int) -> float:
    """lr_t of the transformers' form: lr * sqrt(1 - b2^t) / (1 - b1^t)."""
    return lr * math.sqrt(1.0 - betas[1]**step) / (1.0 - betas[0]**step)
