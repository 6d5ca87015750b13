"""SPAM (arXiv 2501.06842) and Stable-SPAM (arXiv 2502.17055).

Both follow the authors' code as vendored in the benchmark repo
(OptimAI-Lab/Memory_Efficient_Pretraining, `pt_spam`, `pt_stable_spam`), where it
and the papers disagree the default is the code's and the docstring says so.
Global step counters live in each param group, so `state_dict()` carries them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from memopt.optim.adamw import trainable
from memopt.optim.registry import MethodSpec, register
from memopt.optim.checks import check, check_adam_args, check_bool, check_int, check_range
from memopt.optim.config import AdamConfig
from memopt.optim.kernels import adam_, adam_directions, transformers_step_size
from memopt.optim.targets import split_params


def check_spam_args(threshold: float, reset_interval: int, warmup_steps: int, clip_delay: int, density: float,
                    seed: int) -> None:
    check_range("threshold", threshold, 0.0)
    check_range("reset_interval", reset_interval, 0, integer=True)
    check_range("warmup_steps", warmup_steps, 0, integer=True)
    check_range("clip_delay", clip_delay, 0, integer=True)
    check_range("density", density, 0.0, 1.0, lo_open=True, hi_open=False)
    check_int("seed", seed)


@dataclass(frozen=True, kw_only=True)
class SPAMConfig(AdamConfig):
    """The authors' class defaults."""

    eps: float = 1e-6
    threshold: float = 5000.0
    reset_interval: int = 500
    warmup_steps: int = 150
    clip_delay: int = 20
    density: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_spam_args(self.threshold, self.reset_interval, self.warmup_steps, self.clip_delay, self.density,
                        self.seed)


def check_stable_spam_args(gamma1: float, gamma2: float, gamma3: float, reset_interval: int,
                           total_steps: int | None, eta_min: float, separate_ema_step: bool) -> None:
    if gamma1 != -1:  # authors: gamma1 = -1 means "use beta1"
        check_range("gamma1", gamma1, 0.0, 1.0)
    check_range("gamma2", gamma2, 0.0, 1.0)
    check_range("gamma3", gamma3, 0.0, 1.0)
    check_range("reset_interval", reset_interval, 0, integer=True)
    check_range("eta_min", eta_min, 0.0, 1.0, hi_open=False)
    if total_steps is not None:
        check_range("total_steps", total_steps, 1, integer=True)
    check_bool("separate_ema_step", separate_ema_step)


@dataclass(frozen=True, kw_only=True)
class StableSPAMConfig(AdamConfig):
    """The authors' own pretraining scripts (LLaMA on C4 in BF16, e.g. their 130M and 350M runs, and the
    benchmark repo's): gamma1 0.85, gamma2 0.99999, gamma3 0.999, moments reset every 1000 steps; the
    engine supplies total_steps (their total_T = the run's steps). Those are the values behind the paper's
    tables; their class signature's gamma1 0.7, gamma2 0.9 (the StableSPAM class's defaults here) are one
    `method_args` away: stable-spam.gamma1=0.7,stable-spam.gamma2=0.9."""

    gamma1: float = 0.85
    gamma2: float = 0.99999
    gamma3: float = 0.999
    reset_interval: int = 1000
    total_steps: int | None = None  # the authors' total_T: None leaves the cosine beta1/gamma1 schedule off
    eta_min: float = 0.5
    separate_ema_step: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_stable_spam_args(self.gamma1, self.gamma2, self.gamma3, self.reset_interval, self.total_steps,
                               self.eta_min, self.separate_ema_step)


def spam_warmup_factor(t: int, reset_interval: int, warmup_steps: int) -> float:
    """lr factor of step t (1-based): 1 until the first reset, then after each reset
    (t % reset_interval == 0) a cosine ramp 0.01 -> 1 over `warmup_steps` steps
    (the authors' CosineDecay(0.99, W): 1 - 0.99 * (1 + cos(pi j / (W + 1))) / 2)."""
    if reset_interval <= 0 or t < reset_interval:
        return 1.0
    j = t % reset_interval
    if j >= warmup_steps:
        return 1.0
    return 1.0 - 0.99 * (1.0 + math.cos(math.pi * j / (warmup_steps + 1))) / 2.0


class SPAM(torch.optim.Optimizer):
    """Adam with periodic momentum reset + cosine warm-up, spike clipping and
    optional sparse momentum.

    Per step t (1-based): if t % reset_interval == 0 the moments are zeroed (the
    bias-correction step count is NOT reset: authors' code) and the update is scaled
    by `spam_warmup_factor`. Spike clipping (g² > threshold·v ⇒ g := sign(g)·√(threshold·v),
    v from the previous step) applies once t >= clip_delay and
    t % reset_interval >= clip_delay (authors' `grad_accu_steps`: v is too young before).
    Update and decoupled weight decay follow the authors' HF-style AdamW: eps added
    to √v, bias correction folded into the step size, decay p -= lr·wd·p after.

    density < 1 in a group keeps moments only on a random subset of exactly
    int(density·numel) entries of each 2-D weight, re-drawn at every reset (the
    authors draw Bernoulli masks at re-draws, so the count drifts; ours is exact so
    the state size is known). Masks come from `seed`, the param index and the reset
    number, so a resumed run draws the same ones. The authors' code also applies
    weight decay to a copy for masked groups (a no-op); here it decays every entry.
    """

    def __init__(self, params, lr: float = SPAMConfig.lr, betas=SPAMConfig.betas, eps: float = SPAMConfig.eps,
                 weight_decay: float = SPAMConfig.weight_decay, threshold: float = SPAMConfig.threshold,
                 reset_interval: int = SPAMConfig.reset_interval, warmup_steps: int = SPAMConfig.warmup_steps,
                 clip_delay: int = SPAMConfig.clip_delay, density: float = SPAMConfig.density,
                 seed: int = SPAMConfig.seed):
        check_adam_args(lr, betas, eps, weight_decay, zero_lr_ok=True)
        check_spam_args(threshold, reset_interval, warmup_steps, clip_delay, density, seed)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, threshold=threshold,
                        reset_interval=int(reset_interval), warmup_steps=int(warmup_steps),
                        clip_delay=int(clip_delay), density=density, seed=int(seed), total_step=0)
        super().__init__(params, defaults)
        for g in self.param_groups:
            check_range("density", g["density"], 0.0, 1.0, lo_open=True, hi_open=False)
            check(g["density"] == 1.0 or all(p.dim() == 2 for p in g["params"]), "params of a group with density < 1",
                  [tuple(p.shape) for p in g["params"]], "2-D weights only")

    def _index(self, p) -> int:
        return next(i for i, q in enumerate(q for g in self.param_groups for q in g["params"]) if q is p)

    def _draw_mask(self, p, group, resets: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(group["seed"] * 1_000_003 + self._index(p) * 7_919 + resets)
        k = int(group["density"] * p.numel())
        mask = torch.zeros(p.numel(), dtype=torch.bool)
        mask[torch.randperm(p.numel(), generator=gen)[:k]] = True
        return mask.view_as(p).to(p.device)

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        # torch casts every state tensor to the param's dtype on load; masks are boolean.
        for s in self.state.values():
            if "mask" in s:
                s["mask"] = s["mask"].bool()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            group["total_step"] += 1
            t, gap = group["total_step"], group["reset_interval"]
            reset = gap > 0 and t % gap == 0
            factor = spam_warmup_factor(t, gap, group["warmup_steps"])
            clip = group["threshold"] > 0 and t >= group["clip_delay"] and (gap <= 0 or t % gap >= group["clip_delay"])
            sparse = group["density"] < 1.0
            params, grads, states = [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    if sparse:
                        state["mask"] = self._draw_mask(p, group, 0)
                    n = int(state["mask"].sum()) if sparse else p.numel()
                    shape = (n,) if sparse else p.shape
                    state["exp_avg"] = torch.zeros(shape, dtype=p.dtype, device=p.device)
                    state["exp_avg_sq"] = torch.zeros(shape, dtype=p.dtype, device=p.device)
                if reset:
                    if sparse:
                        state["mask"] = self._draw_mask(p, group, t // gap)
                    state["exp_avg"].zero_()
                    state["exp_avg_sq"].zero_()
                state["step"] += 1
                params.append(p)
                grads.append(p.grad[state["mask"]] if sparse else p.grad)
                states.append(state)
            if params:
                self._update(group, params, grads, states, factor, clip, sparse)
        return loss

    @staticmethod
    def _update(group, params, grads, states, factor: float, clip: bool, sparse: bool) -> None:
        exp_avgs, exp_avg_sqs = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
        steps = [s["step"] for s in states]
        if clip:
            grads = clip_spikes(grads, exp_avg_sqs, group["threshold"])
        betas, lr = group["betas"], group["lr"]
        if sparse:  # the moments hold the masked entries only: the direction is scattered into them
            directions = adam_directions(grads, exp_avgs, exp_avg_sqs, steps, betas=betas, eps=group["eps"])
            for p, direction, state in zip(params, directions, states):
                p[state["mask"]] -= direction * (transformers_step_size(lr, betas, state["step"]) * factor)
        else:
            adam_(params, grads, exp_avgs, exp_avg_sqs, steps, lr=lr * factor, betas=betas, eps=group["eps"],
                  transformers_eps=True)
        if group["weight_decay"] > 0:
            torch._foreach_add_(params, params, alpha=-lr * group["weight_decay"])  # after the update


SPIKE_CHUNK = 1 << 19  # elements: the margin's temporary (2 MiB in fp32) stays in a CPU core's cache


def spike_margin(grad: torch.Tensor, exp_avg_sq: torch.Tensor, threshold: float) -> torch.Tensor:
    """min(v - g^2 / threshold) over the tensor, a 0-d tensor: negative where some g^2 > threshold * v.

    On CPU in cache-sized chunks: one read of g and v, where a whole-tensor temporary would be written to
    memory and read back (about as much traffic as the Adam step itself)."""
    g, v = grad.reshape(-1), exp_avg_sq.reshape(-1)
    chunk = SPIKE_CHUNK if grad.device.type == "cpu" else g.numel()
    scratch = torch.empty(min(chunk, g.numel()), dtype=g.dtype, device=g.device)
    lows = []
    for start in range(0, g.numel(), chunk):
        gc, vc = g[start:start + chunk], v[start:start + chunk]
        lows.append(torch.addcmul(vc, gc, gc, value=-1.0 / threshold, out=scratch[:gc.numel()]).amin())
    return torch.stack(lows).amin() if lows else torch.zeros((), device=g.device)


def clip_spikes(grads: list[torch.Tensor], exp_avg_sqs: list[torch.Tensor], threshold: float) -> list[torch.Tensor]:
    """SPAM's spike clipping, g := sign(g) * sqrt(threshold * v) where g^2 > threshold * v (v: the previous
    step's). Spikes are rare: a tensor without one is returned as it is (found by `spike_margin`, one sync for
    all); a tensor with one gets the authors' formula, as a new tensor. The gradients are not changed."""
    if not grads:
        return grads
    margins = torch.stack([spike_margin(g, v, threshold) for g, v in zip(grads, exp_avg_sqs)]).tolist()
    clipped = []
    for grad, v, margin in zip(grads, exp_avg_sqs, margins):
        if margin < 0:
            bound = v * threshold
            grad = torch.where(grad.square() > bound, grad.sign() * bound.sqrt(), grad)
        clipped.append(grad)
    return clipped


class StableSPAM(torch.optim.Optimizer):
    """Stable-SPAM: per tensor, adaptive spike clipping to a bias-corrected EMA of
    max|g| (gamma3), gradient-norm normalization g := g/‖g‖ · m̂/(√v̂+eps) with EMAs
    of ‖g‖ (gamma1) and ‖g‖² (gamma2), moments reset every `reset_interval` steps,
    torch-style AdamW update (decay before, eps after bias-corrected √v).

    `total_steps` (authors' total_T, default None = off) scales beta1 and gamma1 by a
    cosine from 1 to 0.5 (`eta_min`) over training. At a reset the authors set the
    shared step count to 1, which also restarts the bias correction of the clip and
    norm EMAs (so clipping barely acts after the first reset); kept as the default,
    `separate_ema_step=True` gives the EMAs their own never-reset count.

    The per-tensor formulas run batched over the group (`_update`); the last division of the gradient is the
    fused kernel's grad scale, which writes the divided gradient back: after `step()` a gradient may hold its
    normalized value (the training engine drops gradients after every step).

    Fixed authors' fault: their reset stores fresh zero moments in `state` but goes
    on updating the old tensors it bound before, so the reset step uses the stale
    moments and the next step starts from zeros; here the reset step starts from zero.
    """

    def __init__(self, params, lr: float = StableSPAMConfig.lr, betas=StableSPAMConfig.betas,
                 eps: float = StableSPAMConfig.eps, weight_decay: float = StableSPAMConfig.weight_decay,
                 gamma1: float = 0.7, gamma2: float = 0.9,  # the authors' class signature (the registry: their scripts')
                 gamma3: float = StableSPAMConfig.gamma3, reset_interval: int = StableSPAMConfig.reset_interval,
                 total_steps: int | None = StableSPAMConfig.total_steps, eta_min: float = StableSPAMConfig.eta_min,
                 separate_ema_step: bool = StableSPAMConfig.separate_ema_step):
        check_adam_args(lr, betas, eps, weight_decay, zero_lr_ok=True)
        check_stable_spam_args(gamma1, gamma2, gamma3, reset_interval, total_steps, eta_min, separate_ema_step)
        if gamma1 == -1:  # authors: gamma1 = -1 means "use beta1"
            gamma1 = betas[0]
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, gamma1=gamma1, gamma2=gamma2,
                        gamma3=gamma3, reset_interval=int(reset_interval), total_steps=total_steps, eta_min=eta_min,
                        separate_ema_step=bool(separate_ema_step), total_step=0)
        super().__init__(params, defaults)

    @staticmethod
    def schedule_scale(t: int, total_steps: int | None, eta_min: float) -> float:
        if total_steps is None:
            return 1.0
        return eta_min + (1.0 - eta_min) * (1.0 + math.cos(math.pi * t / (total_steps + 1))) / 2.0

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            group["total_step"] += 1
            t, gap = group["total_step"], group["reset_interval"]
            scale = self.schedule_scale(t, group["total_steps"], group["eta_min"])
            params, states = [p for p in group["params"] if p.grad is not None], []
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["ema_step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    for k in ("m_norm", "v_norm", "m_max"):
                        state[k] = torch.zeros((), dtype=torch.float32, device=p.device)
                states.append(state)
            if params:
                self._update(group, params, states, scale, reset=gap > 0 and t % gap == 0)
        return loss

    @staticmethod
    def _update(group, params, states, scale: float, reset: bool) -> None:
        """The authors' per-tensor formulas, batched over the group: per-tensor scalars on foreach ops, the
        clipping only on tensors that have a spike, the normalization as the fused kernel's grad scale."""
        g1, g2, g3, eps = group["gamma1"] * scale, group["gamma2"], group["gamma3"], group["eps"]
        ks = []
        for state in states:
            state["step"] += 1
            state["ema_step"] += 1
            ks.append(state["ema_step"] if group["separate_ema_step"] else state["step"])
        grads = [p.grad for p in params]

        chunk_maxes = [chunk_max_abs(g) for g in grads]  # max|g| per chunk: which chunks a clip must rescan
        max_gs = torch._foreach_max(chunk_maxes)
        m_maxes = [state["m_max"] for state in states]
        torch._foreach_mul_(m_maxes, g3)
        torch._foreach_add_(m_maxes, max_gs, alpha=1.0 - g3)
        m_max_hats = torch._foreach_div(m_maxes, [1.0 - g3**k for k in ks])
        spiking = (torch.stack(max_gs) > torch.stack(m_max_hats)).tolist()  # else no |g| > the hat: nothing to clip
        for g, chunk_max, max_g, hat, spike in zip(grads, chunk_maxes, max_gs, m_max_hats, spiking):
            if spike:
                pull_spikes_(g, max_g, hat, chunk_max)
        norms = [n.float() for n in torch._foreach_norm(grads)]
        m_norms, v_norms = [state["m_norm"] for state in states], [state["v_norm"] for state in states]
        torch._foreach_mul_(m_norms, g1)
        torch._foreach_add_(m_norms, norms, alpha=1.0 - g1)
        torch._foreach_mul_(v_norms, g2)
        torch._foreach_addcmul_(v_norms, norms, norms, value=1.0 - g2)
        targets = [(m / (1.0 - g1**k)) / ((v / (1.0 - g2**k)).sqrt() + eps) for m, v, k in zip(m_norms, v_norms, ks)]
        # g := g / ||g|| * target, as the kernel's divisor ||g|| / target (none for a zero gradient)
        grad_scales = [torch.where(norm > 0, norm / target, 1.0) for norm, target in zip(norms, targets)]

        if reset:
            for state in states:
                state["exp_avg"].zero_()
                state["exp_avg_sq"].zero_()
                state["step"] = 1
                if not group["separate_ema_step"]:
                    state["ema_step"] = 1
        adam_(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
              [s["step"] for s in states], lr=group["lr"], betas=(group["betas"][0] * scale, group["betas"][1]),
              eps=eps, weight_decay=group["weight_decay"], grad_scales=grad_scales)


CLIP_CHUNK = 1 << 16  # elements: a clip rescans only the 256 KiB chunks whose maximum is above the hat


def clip_chunk(t: torch.Tensor) -> int:
    return CLIP_CHUNK if t.device.type == "cpu" else max(t.numel(), 1)


def chunk_max_abs(t: torch.Tensor) -> torch.Tensor:
    """max |t| of each `clip_chunk` elements of t flattened (the last chunk may be shorter), fp32, in one read:
    the tensor's max|t| and where its spikes can be. amax and amin along the chunks: on CPU torch's aminmax
    and its abs().amax() take two to three times longer."""
    flat, chunk = t.reshape(-1), clip_chunk(t)
    full = flat.numel() // chunk * chunk
    parts = []
    if full:
        heads = flat[:full].view(-1, chunk)
        parts.append(torch.maximum(heads.amax(1), heads.amin(1).neg()))
    if full < flat.numel():
        tail = flat[full:]
        parts.append(torch.maximum(tail.amax(), tail.amin().neg()).view(1))
    return torch.cat(parts).float()


def pull_spikes_(g: torch.Tensor, max_g: torch.Tensor, hat: torch.Tensor, chunk_max: torch.Tensor | None = None) -> None:
    """Stable-SPAM's clipping in place, g := g / max|g| * hat where |g| > hat: the authors' formula on those
    entries only (they are few, the ones near the maximum), looked for only in the chunks whose maximum
    (`chunk_max_abs`, computed here if not given) is above the hat, where a whole-tensor torch.where writes
    and reads four temporaries."""
    if not g.is_contiguous():
        g.copy_(torch.where(g.abs() > hat, g / max_g * hat, g))
        return
    flat, chunk = g.view(-1), clip_chunk(g)
    if chunk_max is None:
        chunk_max = chunk_max_abs(g)
    for i in (chunk_max > hat).nonzero().flatten().tolist():
        part = flat[i * chunk:(i + 1) * chunk]
        index = (part.abs() > hat).nonzero().flatten()
        part[index] = part[index] / max_g * hat


# ---- registry ----

def build_spam(model: nn.Module, config: SPAMConfig) -> SPAM:
    targets, rest = split_params(model)
    groups = [{"params": rest, "density": 1.0}, {"params": targets, "density": config.density}]
    return SPAM([g for g in groups if g["params"]], **config.as_dict())


def spam_state_bytes(model: nn.Module, config: SPAMConfig) -> int:
    targets, rest = split_params(model)
    dense = sum(2 * p.numel() * p.element_size() for p in rest)
    if config.density >= 1.0:
        return dense + sum(2 * p.numel() * p.element_size() for p in targets)
    # kept moments + one bool mask byte per element
    return dense + sum(2 * int(config.density * p.numel()) * p.element_size() + p.numel() for p in targets)


def build_stable_spam(model: nn.Module, config: StableSPAMConfig) -> StableSPAM:
    return StableSPAM(trainable(model), **config.as_dict())


def stable_spam_state_bytes(model: nn.Module, config: StableSPAMConfig) -> int:
    # two moments, plus three fp32 scalars (EMAs of max|g|, ‖g‖, ‖g‖²) per tensor
    params = trainable(model)
    return sum(2 * p.numel() * p.element_size() + 12 for p in params)


register(MethodSpec(
    name="spam", config=SPAMConfig, builder=build_spam, state_bytes=spam_state_bytes,
    summary="Adam with momentum reset every 500 steps + 150-step cosine warm-up, spike clipping at 5000·v, "
            "optional sparse momentum (density)",
    paper="arXiv 2501.06842",
))
register(MethodSpec(
    name="stable-spam", config=StableSPAMConfig, builder=build_stable_spam, state_bytes=stable_spam_state_bytes,
    summary="SPAM with adaptive clipping to an EMA of max|g|, gradient-norm normalization, moment reset every 1000",
    paper="arXiv 2502.17055",
))
