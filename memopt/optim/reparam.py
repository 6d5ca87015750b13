"""Reparameterizing methods: Low-Rank, SLTrain, ReLoRA (LoRO lives in loro.py).

Each builder swaps the target nn.Linear modules (names containing attn/mlp) in
place for a module below and returns the optimizer over the trainable params.
`merged_state_dict(model)` gives back the plain dense state dict (W as a dense
tensor under the original `...weight` key), so the final model can be exported
into the un-reparameterized architecture.

Facts from the benchmark repo (`pt_low_rank`, `pt_sltrain`, `pt_relora`) and
the ReLoRA authors' repo (Guitaricet/relora), with deviations noted:
- Low-Rank: y = B(Ax)·α/r + b, A (r×in) and B (out×r) both kaiming-uniform(a=√5),
  α 32. The original bias is kept (the authors re-draw one; LLaMA has none).
- SLTrain: y = (B·A·α/r + S)x + b; A kaiming, B zero, S on int(δ·out·in) sorted
  random flat positions (fixed for the whole run, drawn from `seed`), values
  uniform ±1/√in. δ 0.03 (paper; the benchmark's CLI default is 0.01). The
  benchmark's optional SVD re-factorization every cycle is not implemented.
- ReLoRA: frozen W plus B·A·α/r; every `relora_steps` steps W += B·A·α/r, A is
  re-drawn kaiming, B zeroed, the Adam moments of A and B keep only entries above
  the `prune_ratio` magnitude quantile (authors' scripts: 0.9), each moment by its own
  quantile as theirs, except that an entry whose second moment is pruned loses its
  first moment too (fixed: with separate masks a kept m over a zeroed v steps by
  m/eps, and right after a merge B = 0 leaves A without gradient to refill v, so A
  jumped to ~1e4 at the first merge of a llama-micro run), and the lr follows a
  jagged restart: ×j/restart_warmup_steps for the j-th step after a merge (j = 0
  first, as in their cosine_restarts schedule). The merge happens inside
  `optimizer.step()` after the update, so the training loop needs nothing (the
  benchmark repo's loop never merges: fixed). The authors also zero A at wrap
  time, which with B = 0 leaves both factors without gradient until the first
  merge; here A starts kaiming (B = 0 alone keeps the function unchanged).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from memopt.optim.adamw import torch_adamw, trainable
from memopt.optim.registry import MethodSpec, register
from memopt.optim.checks import check_int, check_range
from memopt.optim.config import AdamConfig
from memopt.optim.kernels import torch_adamw_kernel
from memopt.optim.targets import target_linears


@dataclass(frozen=True, kw_only=True)
class LowRankConfig(AdamConfig):
    """The benchmark repo's: torch AdamW's block, rank 128, alpha 32. SLTrain and ReLoRA extend it."""

    rank: int = 128
    alpha: float = 32.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("rank", self.rank, 1, integer=True)
        check_range("alpha", self.alpha, 0.0, lo_open=True)


@dataclass(frozen=True, kw_only=True)
class SLTrainConfig(LowRankConfig):
    density: float = 0.03  # the paper's δ; the benchmark's CLI default is 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("density", self.density, 0.0, 1.0, lo_open=True)
        check_int("seed", self.seed)


def check_relora_args(relora_steps: int, restart_warmup_steps: int, prune_ratio: float, seed: int) -> None:
    check_range("relora_steps", relora_steps, 1, integer=True)
    check_range("prune_ratio", prune_ratio, 0.0, 1.0)
    check_range("restart_warmup_steps", restart_warmup_steps, 0, relora_steps, hi_open=False, integer=True)
    check_int("seed", seed)


@dataclass(frozen=True, kw_only=True)
class ReLoRAConfig(LowRankConfig):
    relora_steps: int = 2000
    restart_warmup_steps: int = 100
    prune_ratio: float = 0.9  # the authors' scripts
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_relora_args(self.relora_steps, self.restart_warmup_steps, self.prune_ratio, self.seed)


def _kaiming(t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=generator)


class LowRankLinear(nn.Module):
    """y = B(Ax)·α/r (+ frozen W x for ReLoRA) + b."""

    def __init__(self, linear: nn.Linear, rank: int, alpha: float, keep_weight: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.rank = linear.in_features, linear.out_features, rank
        self.scale = alpha / rank
        dev, dt = linear.weight.device, linear.weight.dtype
        self.lora_A = nn.Parameter(_kaiming(torch.empty(rank, self.in_features, device=dev, dtype=dt)))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, rank, device=dev, dtype=dt))
        self.weight = nn.Parameter(linear.weight.detach().clone(), requires_grad=False) if keep_weight else None
        self.bias = nn.Parameter(linear.bias.detach().clone()) if linear.bias is not None else None

    def low_rank(self) -> torch.Tensor:
        return self.lora_B @ self.lora_A * self.scale

    def dense_weight(self) -> torch.Tensor:
        w = self.low_rank()
        return w if self.weight is None else self.weight + w

    def forward(self, x):
        y = F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale
        if self.weight is not None:
            y = y + F.linear(x, self.weight)
        return y if self.bias is None else y + self.bias


class SparseLowRankLinear(LowRankLinear):
    """SLTrain: W = B·A·α/r + S, S on a fixed random support of int(δ·out·in) entries."""

    def __init__(self, linear: nn.Linear, rank: int, alpha: float, density: float, seed: int):
        super().__init__(linear, rank, alpha)
        nn.init.zeros_(self.lora_B)
        numel = self.out_features * self.in_features
        g = torch.Generator().manual_seed(seed)
        k = int(density * numel)
        index = torch.sort(torch.randperm(numel, generator=g)[:k]).values
        self.register_buffer("sparse_index", index.to(self.lora_A.device))
        bound = 1.0 / math.sqrt(self.in_features)
        values = torch.empty(k, dtype=self.lora_A.dtype).uniform_(-bound, bound, generator=g)
        self.sparse_value = nn.Parameter(values.to(self.lora_A.device))

    def dense_weight(self) -> torch.Tensor:
        low = self.low_rank().flatten()  # bf16 under autocast: S joins it in that dtype
        flat = low.index_add(0, self.sparse_index, self.sparse_value.to(low.dtype))
        return flat.view(self.out_features, self.in_features)

    def forward(self, x):
        return F.linear(x, self.dense_weight(), self.bias)


def reparameterize(model: nn.Module, make) -> list[nn.Module]:
    """Swap every target linear for make(index, name, linear); returns the new modules."""
    new = []
    for i, (name, linear) in enumerate(target_linears(model)):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        module = make(i, name, linear)
        setattr(parent, child, module)
        new.append(module)
    return new


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with every reparameterized module collapsed to dense
    `weight` (and `bias`) under its original keys."""
    sd = dict(model.state_dict())
    for name, module in model.named_modules():
        if hasattr(module, "dense_weight"):
            prefix = f"{name}." if name else ""
            for key in [k for k in sd if k.startswith(prefix)]:
                del sd[key]
            with torch.no_grad():
                sd[prefix + "weight"] = module.dense_weight().detach().clone()
            if module.bias is not None:
                sd[prefix + "bias"] = module.bias.detach().clone()
    return sd


# ---- Low-Rank ----

def build_low_rank(model: nn.Module, config: LowRankConfig) -> torch.optim.AdamW:
    reparameterize(model, lambda i, n, lin: LowRankLinear(lin, config.rank, config.alpha))
    for m in model.modules():
        if isinstance(m, LowRankLinear):
            _kaiming(m.lora_B.data)
    return torch_adamw(trainable(model), config)


def planned_trainables(model: nn.Module, rank: int, density: float = 0.0):
    """(numel, element size) of every trainable tensor once the targets are replaced
    (works on the model before or after the builder ran)."""
    out, seen = [], set()
    for _, lin in target_linears(model):
        el = lin.weight.element_size()
        seen.update(id(p) for p in lin.parameters())
        out += [(rank * lin.in_features, el), (lin.out_features * rank, el)]
        if density:
            out.append((int(density * lin.in_features * lin.out_features), el))
        if lin.bias is not None:
            out.append((lin.bias.numel(), el))
    for m in model.modules():
        if isinstance(m, LowRankLinear):
            seen.update(id(p) for p in m.parameters())
            out += [(p.numel(), p.element_size()) for p in m.parameters() if p.requires_grad]
    out += [(p.numel(), p.element_size()) for p in model.parameters() if p.requires_grad and id(p) not in seen]
    return out


def adamw_bytes(tensors) -> int:
    # torch AdamW: two moments per element plus one fp32 step tensor per param
    return sum(2 * n * el + 4 for n, el in tensors)


def low_rank_state_bytes(model: nn.Module, config: LowRankConfig) -> int:
    return adamw_bytes(planned_trainables(model, config.rank))  # also ReLoRA's: the frozen W holds no state


# ---- SLTrain ----

def build_sltrain(model: nn.Module, config: SLTrainConfig) -> torch.optim.AdamW:
    c = config
    reparameterize(model, lambda i, n, lin: SparseLowRankLinear(lin, c.rank, c.alpha, c.density, c.seed * 100_003 + i))
    return torch_adamw(trainable(model), c)


def sltrain_state_bytes(model: nn.Module, config: SLTrainConfig) -> int:
    return adamw_bytes(planned_trainables(model, config.rank, config.density))


# ---- ReLoRA ----

class ReLoRAAdamW(torch.optim.AdamW):
    """torch AdamW whose step also runs ReLoRA's merge, partial reset and jagged lr restarts."""

    def __init__(self, params, modules: list[LowRankLinear], relora_steps: int, restart_warmup_steps: int,
                 prune_ratio: float, seed: int = ReLoRAConfig.seed, **kw):
        check_relora_args(relora_steps, restart_warmup_steps, prune_ratio, seed)
        super().__init__(params, **kw)
        self.modules = modules
        for g in self.param_groups:
            g.update(relora_steps=relora_steps, restart_warmup_steps=restart_warmup_steps, prune_ratio=prune_ratio,
                     relora_seed=seed, relora_t=0)

    def lr_factor(self, t: int) -> float:
        g = self.param_groups[0]
        gap, warm = g["relora_steps"], g["restart_warmup_steps"]
        if t <= gap or warm == 0:
            return 1.0
        j = (t - 1) % gap
        return min(1.0, j / warm)

    @torch.no_grad()
    def step(self, closure=None):
        t = self.param_groups[0]["relora_t"] + 1
        factor = self.lr_factor(t)
        lrs = [g["lr"] for g in self.param_groups]
        for g in self.param_groups:
            g["lr"] = g["lr"] * factor
            g["relora_t"] = t
        try:
            loss = super().step(closure)
        finally:
            for g, lr in zip(self.param_groups, lrs):
                g["lr"] = lr
        if t % self.param_groups[0]["relora_steps"] == 0:
            self.merge_and_reset(t // self.param_groups[0]["relora_steps"])
        return loss

    @torch.no_grad()
    def merge_and_reset(self, merge_number: int) -> None:
        ratio, seed = self.param_groups[0]["prune_ratio"], self.param_groups[0]["relora_seed"]
        for i, m in enumerate(self.modules):
            m.weight.add_(m.low_rank())
            _kaiming(m.lora_A, torch.Generator(device=m.lora_A.device).manual_seed(
                seed * 1_000_003 + merge_number * 7_919 + i))
            m.lora_B.zero_()
            for p in (m.lora_A, m.lora_B):
                state = self.state[p]
                if "exp_avg" in state:
                    state["exp_avg_sq"] = magnitude_prune(state["exp_avg_sq"], ratio)
                    state["exp_avg"] = magnitude_prune(state["exp_avg"], ratio) * (state["exp_avg_sq"] != 0)


def magnitude_prune(t: torch.Tensor, ratio: float) -> torch.Tensor:
    """Keep entries whose magnitude is above the `ratio` quantile (authors' rule)."""
    if ratio <= 0:
        return t
    mag = t.abs()
    threshold = torch.quantile(mag.flatten().float(), ratio).to(t.dtype)
    return t * (mag > threshold).to(t.dtype)


def build_relora(model: nn.Module, config: ReLoRAConfig) -> ReLoRAAdamW:
    c = config

    def make(i, name, lin):
        m = LowRankLinear(lin, c.rank, c.alpha, keep_weight=True)
        nn.init.zeros_(m.lora_B)  # B = 0: the wrapped model computes exactly what it did before
        return m
    modules = reparameterize(model, make)
    params = trainable(model)
    return ReLoRAAdamW(params, modules, c.relora_steps, c.restart_warmup_steps, c.prune_ratio, c.seed, lr=c.lr,
                       betas=c.betas, eps=c.eps, weight_decay=c.weight_decay, **torch_adamw_kernel(params))


register(MethodSpec(
    name="low-rank", config=LowRankConfig, builder=build_low_rank, state_bytes=low_rank_state_bytes,
    summary="each target W replaced by B·A·α/r, trained from scratch with AdamW",
    paper="arXiv 2505.22922", reparameterizes=True,
))
register(MethodSpec(
    name="sltrain", config=SLTrainConfig, builder=build_sltrain, state_bytes=sltrain_state_bytes,
    summary="W = B·A·α/r + S with S on a fixed random support of δ·mn entries (δ 0.03)",
    paper="arXiv 2406.02214", reparameterizes=True,
))
register(MethodSpec(
    name="relora", config=ReLoRAConfig, builder=build_relora, state_bytes=low_rank_state_bytes,
    summary="frozen W + B·A merged every relora_steps, optimizer states magnitude-pruned, jagged lr restarts",
    paper="arXiv 2307.05695", reparameterizes=True,
))
