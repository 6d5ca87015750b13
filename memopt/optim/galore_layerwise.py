"""Layer-wise GaLore (registry name `galore-layerwise`): GaLoreAdamW's update run inside
backward, one parameter at a time, from `register_post_accumulate_grad_hook`, with each
gradient freed (p.grad = None) right after its update. At most one gradient per
parameter group is alive at a time instead of all of them: the memory the authors'
per-layer mode saves.

Unlike the authors' per-layer mode (their issue 78), gradient accumulation works:
`accumulation_steps` = k micro-batches (backward passes) per optimizer step. Each
parameter counts the backward passes that reached it; on passes 1..k-1 its gradient is
left to accumulate, on pass k it is updated and freed. So the training loop keeps its
usual shape (k backward passes, then `optimizer.step(closure)`), and k must equal the
loop's number of micro-batches.

`step(closure)` does not update anything: by the time it is called every parameter was
updated inside backward. It runs the closure (returning its loss, which may itself do
the backward passes) and counts optimizer steps (`self.optimizer_steps`), so the training
loop calls it like any other optimizer and stays method-agnostic; `zero_grad` is
harmless (gradients are already None).

The update is exactly GaLoreAdamW's (same state, same formulas, same order per
parameter, so the parameters match the plain optimizer bit for bit; see the tests), and
the state bytes are GaLore's formula. What does not carry over (as in the authors' mode):
- anything that needs all gradients before the update: global gradient-norm clipping,
  a GradScaler's unscale/inf check (fp16), a gradient-norm metric taken after backward
  (it sees None);
- checkpoints must be taken at optimizer-step boundaries (the micro-batch counters are
  not in state_dict; they are 0 there);
- a parameter that gets no gradient in some micro-batch shifts its own count.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from memopt.optim.checks import check_range
from memopt.optim.galore import GaLoreAdamW, GaLoreConfig, galore_builder, galore_state_bytes
from memopt.optim.registry import MethodSpec, register


@dataclass(frozen=True, kw_only=True)
class LayerwiseGaLoreConfig(GaLoreConfig):
    accumulation_steps: int = 1  # a run fact: the engine's micro-batches per optimizer step

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("accumulation_steps", self.accumulation_steps, 1, integer=True)


class LayerwiseGaLoreAdamW(GaLoreAdamW):
    frees_gradients_in_backward = True  # no gradient is left when backward ends (memopt.breakdown)

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, *args: Any,
                 accumulation_steps: int = LayerwiseGaLoreConfig.accumulation_steps, **kwargs: Any) -> None:
        check_range("accumulation_steps", accumulation_steps, 1, integer=True)
        super().__init__(params, lr, *args, **kwargs)
        self.accumulation_steps = accumulation_steps
        self.optimizer_steps = 0
        self._passes: dict[int, int] = {}  # id(param) -> backward passes seen in this optimizer step
        self._handles = []
        for index, group in enumerate(self.param_groups):
            for p in group["params"]:
                if p.requires_grad:
                    self._handles.append(p.register_post_accumulate_grad_hook(self._hook(index)))

    def _hook(self, index: int) -> Callable[[torch.Tensor], None]:
        # The group is looked up when the hook runs, not captured: load_state_dict replaces the
        # group dicts, and a scheduler's lr must reach the update.
        def hook(p: torch.Tensor) -> None:
            n = self._passes.get(id(p), 0) + 1
            if n < self.accumulation_steps:
                self._passes[id(p)] = n  # not the last micro-batch: let the gradient accumulate
                return
            self._passes[id(p)] = 0
            with torch.no_grad():
                self._group_step(self.param_groups[index], [p])
            p.grad = None
        return hook

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """No update here (it happened in backward): run the closure, count the step."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.optimizer_steps += 1
        return loss

    def remove_hooks(self) -> None:
        """Detach from the model (the hooks otherwise keep updating on every backward)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["layerwise"] = {"optimizer_steps": self.optimizer_steps, "accumulation_steps": self.accumulation_steps}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        sd = dict(state_dict)
        extra = sd.pop("layerwise", {})
        super().load_state_dict(sd)
        self.optimizer_steps = int(extra.get("optimizer_steps", 0))
        self._passes.clear()  # checkpoints are taken at optimizer-step boundaries


# --- registry -------------------------------------------------------------------------------
GALORE_LAYERWISE = register(
    MethodSpec(
        name="galore-layerwise",
        config=LayerwiseGaLoreConfig,
        builder=galore_builder(LayerwiseGaLoreAdamW),
        state_bytes=galore_state_bytes,  # GaLore's: the same state; the hooks and counters hold no tensors
        summary="GaLore-AdamW stepped inside backward per parameter (gradients freed at once), gradient accumulation kept",
        paper="arXiv 2403.03507",
        steps_in_backward=True,
    )
)
