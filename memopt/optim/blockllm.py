"""BlockLLM (arXiv 2406.17296): Adam on a gradient-ranked subset of whole parameter tensors.

The unit is a whole tensor. Tensors whose names contain one of `frozen_patterns`
(default ("embed", "lm_head"), the authors') are frozen for good; `frozen_patterns=()`
makes every tensor a candidate: the two regimes of the authors' code, their packaged
class for fine-tuning and their C4 pretraining path (`adjust_parameters_selective_weighted`),
which memopt's regimes follow (memopt/regimes.py). Of the candidates, the selected ones (about
(1 - sparsity) of the candidates' elements: the budget counts the candidates only, as the
authors' re-selection and their C4 path do; frozen elements are not in it) keep
`requires_grad=True` and have Adam state; every other tensor has `requires_grad=False`: no
gradient, no state. That is where the memory goes down.

The step, in order (the loss reaches the optimizer through `step(closure)`; the
closure returns the loss, as the training loop always passes one; the backward runs
either in the closure or, as in memopt.train, before `step`):
1. loss = closure().
2. Probe read-out: the tensors armed at the end of the previous step (item 8) got
   a gradient from this step's backward; their ‖g‖ is recorded, then they are
   switched off and the gradient dropped. A probe is never updated, has no Adam state.
3. First selection (see below), if still pending.
4. ‖g‖ of every tensor that has a gradient is recorded (last known norm per tensor).
5. AdamW (torch's formula, decoupled weight decay, torch's fused kernel) on the selected tensors,
   lr/betas/eps/weight_decay read from `param_groups[0]`, so an outer LR scheduler
   reaches the update. There is always exactly one param group.
6. The loss is appended to the loss history (cleared at every selection).
7. Re-selection check, as in the authors' `_should_adjust_parameters`: only when
   step % update_freq == 0 and more than `patience` losses are known; fires when
   mean(all losses since the last selection) < mean(last `patience` losses).
   Ranking: key = ‖g‖ / exp(visits / step), where visits counts the selections a
   tensor has been part of and step is the number of completed steps; tensors with
   no known norm rank last, in random order. The element budget is filled greedily
   in rank order: a tensor is taken when it still fits (so the selection never
   exceeds the budget and no unselected tensor would still fit); if not even one
   tensor fits, the top-ranked one is taken alone. All Adam states are reset.
8. Probe arming: if the number of completed steps is a positive multiple of
   `param_update_interval` (and no selection is pending), `num_bottom_to_sample`
   random unselected tensors (drawn after any re-selection) get requires_grad=True,
   so that the next backward, whoever runs it, computes their gradient. The armed
   list is saved in `state_dict`.

First selection: by gradient magnitude, as the paper says. If every candidate
already has a gradient when the optimizer is built, it selects right away.
Otherwise every candidate stays trainable until the first `step`, which ranks
them by the gradients of that first closure (one full backward, once), selects,
and updates the selected tensors with those same gradients.

Faults of the authors' code (blockllm_torch/blockllm.py) fixed here:
- first selection random (shuffled) although named "by magnitude": now by ‖g‖;
- budget counted in tensors (int((1-s) * #tensors)), not elements: now elements;
- re-selection filling stopped before the budget (break on overflow, dead
  random-fill loop): now greedy fill by rank;
- the first `step()` updated nothing: it updates;
- the loss had to be pushed by `set_loss`, which the example never calls, so
  re-selection never fired: the loss comes from the closure;
- an outer LR scheduler did not reach the inner Adam (rebuilt at each selection):
  one fixed param group, lr read from it every step;
- visit frequencies were renormalized to fractions summing to 1, which makes
  exp(visits/step) ~ 1 (no penalty): raw visit counts are used;
- the probed tensor stayed trainable (gradient held) for `param_update_interval`
  steps: it is on for one backward (armed at the end of a step, read and switched
  off in the next, so it also works when the backward runs outside the closure).
Other differences: decoupled weight decay (the authors' Adam got none), one
seeded torch.Generator for every random choice, saved in `state_dict`.

State bytes held between steps (exact, see memory_test.py):
  2 * Σ_selected numel * element_size      Adam moments
  + n * (1 + 8 + 4)                        selected mask (bool), visits (int64), last ‖g‖ (fp32)
where n = number of non-frozen tensors; step counters, the loss history and the
armed probes' indices are Python numbers. Moments are allocated (zeros) at selection
time, so these bytes are a function of the selection alone, also right after a
re-selection. The registry formula reads the selection from the model's
requires_grad flags, less the armed probes, which the optimizer marks with the
parameter attribute `_blockllm_probe` (exact once the optimizer has stepped; on a
fresh model it gives the full-budget bound).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from memopt.optim.checks import check, check_adam_args, check_int, check_range
from memopt.optim.config import AdamConfig
from memopt.optim.kernels import adam_
from memopt.optim.registry import MethodSpec, register

FROZEN_PATTERNS = ("embed", "lm_head")
PROBE_MARK = "_blockllm_probe"  # param attribute, True while armed: the state-bytes formula gets only the model


def check_blockllm_args(sparsity: float, update_freq: int, num_bottom_to_sample: int, patience: int,
                        param_update_interval: int, seed: int, frozen_patterns: Any) -> None:
    check_range("sparsity", sparsity, 0.0, 1.0)
    check_range("update_freq", update_freq, 1, integer=True)
    check_range("patience", patience, 1, integer=True)
    check_range("num_bottom_to_sample", num_bottom_to_sample, 0, integer=True)
    check_range("param_update_interval", param_update_interval, 1, integer=True)
    check_int("seed", seed)
    check(isinstance(frozen_patterns, (tuple, list)) and all(isinstance(x, str) and x for x in frozen_patterns),
          "frozen_patterns", frozen_patterns, "a tuple of non-empty name substrings, () for none")


@dataclass(frozen=True, kw_only=True)
class BlockLLMConfig(AdamConfig):
    """The authors' config defaults (METHODS.md); the Adam block is torch's (eps 1e-8)."""

    sparsity: float = 0.9
    update_freq: int = 1000
    num_bottom_to_sample: int = 1
    patience: int = 100
    param_update_interval: int = 20
    seed: int = 0
    frozen_patterns: tuple[str, ...] = FROZEN_PATTERNS  # the authors'; () makes embeddings/lm_head candidates too

    def __post_init__(self) -> None:
        super().__post_init__()
        check_blockllm_args(self.sparsity, self.update_freq, self.num_bottom_to_sample, self.patience,
                            self.param_update_interval, self.seed, self.frozen_patterns)
        self._normalize("frozen_patterns", tuple(self.frozen_patterns))


def budget_elements(sparsity: float, candidates: list[nn.Parameter]) -> int:
    """The selection's element budget: (1 - sparsity) of the candidates' elements (frozen ones not counted)."""
    return int((1.0 - sparsity) * sum(p.numel() for p in candidates))


def rank_and_fill(
    grad_norms: torch.Tensor, visits: torch.Tensor, step: int, numels: list[int], budget: int, generator: torch.Generator
) -> torch.Tensor:
    """Selection mask: rank by ‖g‖/exp(visits/step) (unknown norms last, random order), fill the budget greedily."""
    keys = grad_norms.double() / torch.exp(visits.double() / max(step, 1))
    known = ~torch.isnan(keys)
    known_idx = known.nonzero().flatten()
    order = known_idx[torch.sort(keys[known_idx], descending=True, stable=True).indices].tolist()
    unknown_idx = (~known).nonzero().flatten()
    order += unknown_idx[torch.randperm(len(unknown_idx), generator=generator)].tolist()
    mask = torch.zeros(len(numels), dtype=torch.bool)
    used = 0
    for i in order:
        if used + numels[i] <= budget:
            mask[i] = True
            used += numels[i]
    if not mask.any() and order:
        mask[order[0]] = True  # the budget is smaller than every tensor: keep the best one
    return mask


class BlockLLM(torch.optim.Optimizer):
    def __init__(
        self,
        named_params: Iterable[tuple[str, nn.Parameter]],
        lr: float = BlockLLMConfig.lr,
        betas: tuple[float, float] = BlockLLMConfig.betas,
        eps: float = BlockLLMConfig.eps,
        weight_decay: float = BlockLLMConfig.weight_decay,
        sparsity: float = BlockLLMConfig.sparsity,
        update_freq: int = BlockLLMConfig.update_freq,
        num_bottom_to_sample: int = BlockLLMConfig.num_bottom_to_sample,
        patience: int = BlockLLMConfig.patience,
        param_update_interval: int = BlockLLMConfig.param_update_interval,
        seed: int = BlockLLMConfig.seed,
        frozen_patterns: tuple[str, ...] = BlockLLMConfig.frozen_patterns,
    ) -> None:
        check_adam_args(lr, betas, eps, weight_decay)
        check_blockllm_args(sparsity, update_freq, num_bottom_to_sample, patience, param_update_interval, seed,
                            frozen_patterns)
        frozen_patterns = tuple(frozen_patterns)
        named = list(named_params)
        candidates: list[tuple[str, nn.Parameter]] = []
        for name, p in named:
            setattr(p, PROBE_MARK, False)  # a mark left by an earlier BlockLLM on this model means nothing here
            if any(pat in name for pat in frozen_patterns):
                p.requires_grad_(False)
                p.grad = None
            elif p.requires_grad:
                candidates.append((name, p))
        if not candidates:
            raise ValueError(f"BlockLLM found no trainable tensor outside {frozen_patterns}")
        super().__init__([{"params": [p for _, p in candidates]}],
                         dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.names = [n for n, _ in candidates]
        self.frozen_names = [n for n, p in named if any(pat in n for pat in frozen_patterns)]
        self.sparsity, self.update_freq, self.patience = sparsity, update_freq, patience
        self.num_bottom_to_sample, self.param_update_interval = num_bottom_to_sample, param_update_interval
        self.budget = budget_elements(sparsity, [p for _, p in candidates])
        n = len(candidates)
        # Bookkeeping held as tensors (counted by memopt.memory.optimizer_state_bytes).
        self.selected = torch.zeros(n, dtype=torch.bool)
        self.visits = torch.zeros(n, dtype=torch.int64)
        self.grad_norms = torch.full((n,), float("nan"), dtype=torch.float32)
        self.loss_history: list[float] = []
        self.num_steps = 0
        self.num_selections = 0
        self.selection_pending = True
        self.probes: list[int] = []  # armed at the end of a step, read out in the next one
        self.generator = torch.Generator().manual_seed(seed)
        if all(p.grad is not None for p in self._params):
            self._record_norms(range(n))
            self._select()

    @property
    def _params(self) -> list[nn.Parameter]:
        return self.param_groups[0]["params"]

    # --- selection ------------------------------------------------------------------------
    def _record_norms(self, indices: Iterable[int]) -> None:
        idx = [i for i in indices if self._params[i].grad is not None]
        if idx:
            norms = torch._foreach_norm([self._params[i].grad for i in idx])
            self.grad_norms[idx] = torch.stack(norms).float().cpu()

    def _select(self) -> None:
        numels = [p.numel() for p in self._params]
        mask = rank_and_fill(self.grad_norms, self.visits, self.num_steps, numels, self.budget, self.generator)
        self.selected.copy_(mask)
        self.visits += mask.long()
        # Fresh Adam states for the new selection (authors rebuild their inner Adam), allocated now so
        # that what is held between steps is a function of the selection alone.
        self.state.clear()
        for p, on in zip(self._params, mask.tolist()):
            if on:
                self.state[p] = {"step": 0, "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                 "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        self.loss_history = []
        self.num_selections += 1
        self.selection_pending = False
        self._apply_flags(drop_unselected_grads=True)

    def _apply_flags(self, drop_unselected_grads: bool) -> None:
        probes = set(self.probes)
        for i, (p, on) in enumerate(zip(self._params, self.selected.tolist())):
            p.requires_grad_(on or self.selection_pending or i in probes)
            setattr(p, PROBE_MARK, i in probes)
            if drop_unselected_grads and not on:
                p.grad = None

    def _should_reselect(self) -> bool:
        h = self.loss_history
        if len(h) <= self.patience or self.num_steps % self.update_freq != 0:
            return False
        return sum(h) / len(h) < sum(h[-self.patience:]) / self.patience

    def _arm_probes(self) -> None:
        # Armed between steps, not inside the next `step`: the training loop runs the backward before
        # calling `step`, so a tensor switched on only around the closure would never get a gradient.
        if self.selection_pending or self.num_steps == 0 or self.num_steps % self.param_update_interval:
            return
        pool = (~self.selected).nonzero().flatten()  # after any re-selection: a probe is never selected
        k = min(self.num_bottom_to_sample, len(pool))
        self.probes = pool[torch.randperm(len(pool), generator=self.generator)[:k]].tolist()
        self._apply_flags(drop_unselected_grads=True)

    # --- step -----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        if closure is None:
            raise ValueError("BlockLLM.step needs a closure that returns the loss (backward run in it or before step)")
        with torch.enable_grad():
            loss = closure()
        if self.probes:  # their gradient is this step's (backward in the closure or before `step`)
            self._record_norms(self.probes)
            self.probes = []
            self._apply_flags(drop_unselected_grads=True)  # off again, gradient dropped: measured, never updated
        if self.selection_pending:
            self._record_norms(range(len(self._params)))
            self._select()
        selected = self.selected.nonzero().flatten().tolist()
        self._record_norms(selected)
        self._adam(selected)
        self.num_steps += 1
        self.loss_history.append(float(loss))
        if self._should_reselect():
            self._select()
        self._arm_probes()
        return loss

    def _adam(self, indices: list[int]) -> None:
        # States exist for every selected tensor (allocated at selection, or restored by load_state_dict).
        group = self.param_groups[0]
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for i in indices:
            p = self._params[i]
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        adam_(params, grads, exp_avgs, exp_avg_sqs, steps, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=wd)

    # --- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["blockllm"] = {
            "names": list(self.names),
            "selected": self.selected.clone(),
            "visits": self.visits.clone(),
            "grad_norms": self.grad_norms.clone(),
            "loss_history": list(self.loss_history),
            "num_steps": self.num_steps,
            "num_selections": self.num_selections,
            "selection_pending": self.selection_pending,
            "probes": list(self.probes),
            "budget": self.budget,
            "rng_state": self.generator.get_state(),
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        sd = dict(state_dict)
        extra = sd.pop("blockllm", None)
        if extra is None:
            raise ValueError("not a BlockLLM state_dict: the 'blockllm' entry (selection, visits, RNG) is missing")
        if list(extra["names"]) != self.names:
            raise ValueError("BlockLLM state_dict was saved for different tensors (names differ)")
        super().load_state_dict(sd)
        self.selected.copy_(extra["selected"])
        self.visits.copy_(extra["visits"])
        self.grad_norms.copy_(extra["grad_norms"])
        self.loss_history = [float(x) for x in extra["loss_history"]]
        self.num_steps = int(extra["num_steps"])
        self.num_selections = int(extra["num_selections"])
        self.selection_pending = bool(extra["selection_pending"])
        self.probes = [int(i) for i in extra.get("probes", [])]  # absent in checkpoints from before arming
        self.budget = int(extra["budget"])
        self.generator.set_state(extra["rng_state"])
        self._apply_flags(drop_unselected_grads=True)  # requires_grad follows the loaded selection and probes


# --- registry -------------------------------------------------------------------------------
def build_blockllm(model: nn.Module, config: BlockLLMConfig) -> BlockLLM:
    return BlockLLM(model.named_parameters(), **config.as_dict())


def blockllm_state_bytes(model: nn.Module, config: BlockLLMConfig) -> int:
    """Exact once the optimizer has stepped: the selection is what requires_grad marks on the model,
    less the armed probes (trainable until the next backward, but never given Adam state).

    On a model no BlockLLM has stepped yet (every candidate trainable) it returns the budget's
    bound, 2 * floor((1 - sparsity) * candidate elements) * element_size + bookkeeping.
    """
    named = list(model.named_parameters())
    cands = [p for n, p in named if not any(pat in n for pat in config.frozen_patterns)]
    bookkeeping = len(cands) * (1 + 8 + 4)
    selected = [p.requires_grad and not getattr(p, PROBE_MARK, False) for p in cands]
    if cands and all(selected):
        return 2 * budget_elements(config.sparsity, cands) * cands[0].element_size() + bookkeeping
    return sum(2 * p.numel() * p.element_size() for p, on in zip(cands, selected) if on) + bookkeeping


BLOCKLLM = register(
    MethodSpec(
        name="blockllm",
        config=BlockLLMConfig,
        builder=build_blockllm,
        state_bytes=blockllm_state_bytes,
        summary="BlockLLM: Adam on whole tensors ranked by ‖g‖/exp(visits/step), about (1-sparsity) of the elements",
        paper="arXiv 2406.17296",
        needs_closure=True,
    )
)
