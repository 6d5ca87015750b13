"""Where a training step's memory goes: weights, gradients, optimizer state, peak activations and the rest.

One training step is measured at its phase boundaries (the trainer calls `StepMemory.boundary` there; on every
other step the probe does nothing):

    step_start -> forward (each micro-batch's loss) -> backward (gradients complete) -> optimizer_step

- weights: every storage of the model's parameters and buffers, each once;
- gradients: the `.grad` storages when backward ends (a method that steps inside backward has freed them);
- optimizer state: `memopt.memory.optimizer_state_bytes` after the step;
- peak activations: the most bytes that autograd's saved tensors held at once during forward and backward
  (`torch.autograd.graph.saved_tensors_hooks`: each saved storage counted once while any node holds it,
  parameters left out; the fused loss's gradients, computed in forward and saved for backward, count here).
  Under gradient checkpointing this is a lower bound: torch.utils.checkpoint keeps the checkpointed layers'
  inputs and their recomputed tensors itself, outside these hooks;
- the step's peak: on CPU the kernel's high-water mark of the resident set over this step alone (reset at the
  step's start, memopt.monitor.reset_peak_rss), on CUDA torch's peak of allocated memory over the step;
- runtime: what the process held right before the model was built (the trainer's reading: RSS on CPU, i.e.
  Python, the libraries and the tokenized data; allocated bytes on CUDA, normally 0);
- the rest: the step's peak minus the runtime and the four parts: temporaries, code loaded since, and memory
  the allocator keeps (glibc holds freed tensors resident; torch's CUDA cache is not in the allocated figure).
  Gradients and activations do not all coexist (backward frees activations as it makes gradients), so the
  rest is a lower bound of that overhead.

Beside each measured part, its analytic estimate from the shapes (`estimate`): parameters × dtype size; the
trainable parameters for gradients; the method's registered formula for the state
(`memopt.optim.expected_state_bytes`); for activations, the count of what a LLaMA/Qwen2 decoder layer saves
(`activation_bytes`), where the model is one of those with every weight trainable and fp32.
"""
from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from memopt.memory import optimizer_state_bytes
from memopt.monitor import MIB, reset_cuda_peak, reset_peak_rss, rss_bytes, rss_high_water_bytes
from memopt.vocabulary import MemoryPart, Metric

PHASES = ("step_start", "forward", "backward", "optimizer_step")


def storage_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    """Bytes of the storages behind `tensors`, each storage once (views and shared tensors are not counted twice)."""
    sizes: dict[int, int] = {}
    for t in tensors:
        if t is not None:
            storage = t.untyped_storage()
            sizes[storage.data_ptr()] = storage.nbytes()
    return sum(sizes.values())


class _Saved:
    """What the pack hook hands autograd: when autograd drops it, the saved tensor is no longer held."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


class SavedTensorMeter:
    """Live and peak bytes of the tensors autograd saves for backward while the meter is entered."""

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        self._exclude = {t.untyped_storage().data_ptr() for t in exclude}
        self._holders: dict[int, int] = {}  # storage -> saved tensors holding it
        self._sizes: dict[int, int] = {}
        self.live = self.peak = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor: torch.Tensor) -> object:
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr == 0 or ptr in self._exclude:
            return tensor
        if ptr not in self._holders:
            self._holders[ptr], self._sizes[ptr] = 0, storage.nbytes()
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        self._holders[ptr] += 1
        saved = _Saved(tensor)
        weakref.finalize(saved, self._release, ptr)
        return saved

    @staticmethod
    def _unpack(saved: object) -> torch.Tensor:
        return saved.tensor if isinstance(saved, _Saved) else saved

    def _release(self, ptr: int) -> None:
        self._holders[ptr] -= 1
        if self._holders[ptr] == 0:
            del self._holders[ptr]
            self.live -= self._sizes.pop(ptr)

    def __enter__(self) -> "SavedTensorMeter":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


def activation_bytes(config: object, rows: int, seq_len: int) -> int | None:
    """What the forward of a LLaMA/Qwen2 causal LM (transformers' sdpa attention, fp32, every weight trainable)
    saves for backward, with memopt.loss's fused loss, for `rows` sequences of `seq_len` tokens; None for any
    other model. Counted from the layer's code, per layer with T = rows × seq_len tokens:
    each RMSNorm saves its input, the inverse root and the normalized input (2·T·h + T), and its output is the
    next linears' input (T·h); attention saves q and the output (T·h each), k and v (T·kv each) and the
    log-sum-exp (rows·heads·seq_len); the MLP saves gate, silu(gate), up and their product (4·T·i). Outside the
    layers: the token ids (int64), RoPE's cos and sin, the final norm (2·T·h + T), and the fused loss's
    gradients for the hidden states (T·h) and the output projection (vocab·h, fp32)."""
    if getattr(config, "model_type", None) not in ("llama", "qwen2") or getattr(config, "_attn_implementation", None) != "sdpa":
        return None
    h, i, heads = config.hidden_size, config.intermediate_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    kv = (config.num_key_value_heads or heads) * head_dim
    tokens = rows * seq_len
    per_layer = 8 * tokens * h + 2 * tokens * kv + 4 * tokens * i + 2 * tokens + rows * heads * seq_len
    floats = config.num_hidden_layers * per_layer + 2 * seq_len * head_dim + 3 * tokens * h + tokens + config.vocab_size * h
    return 4 * floats + 8 * tokens


def estimate(model: nn.Module, optimizer: torch.optim.Optimizer, activation_shape: tuple[int, int] | None
             ) -> dict[str, int | None]:
    """Weights, gradients and activations by their formulas, for the model as it is now (its trainable tensors,
    its shapes); `activation_shape` is (rows, seq_len) of one forward, None where no formula applies (gradient
    checkpointing, autocast). The optimizer state's formula is the method's own (memopt.optim)."""
    params = list(model.parameters())
    plain = (all(p.requires_grad and p.dtype == torch.float32 for p in params)
             and not any(hasattr(m, "dense_weight") for m in model.modules()))  # reparameterized: other tensors
    # galore-layerwise frees each gradient inside backward, right after its update
    frees_gradients = getattr(optimizer, "frees_gradients_in_backward", False)
    return {
        MemoryPart.WEIGHTS: sum(p.numel() * p.element_size() for p in params),
        MemoryPart.GRADIENTS: 0 if frees_gradients else sum(p.numel() * p.element_size() for p in params if p.requires_grad),
        MemoryPart.ACTIVATIONS: activation_bytes(model.config, *activation_shape) if plain and activation_shape else None,
    }


@dataclass
class Breakdown:
    """One step's memory, in bytes."""

    step: int
    device: str
    measured: dict[str, int]
    estimate: dict[str, int | None]
    runtime: int  # the reading right before the model was built
    peak: int  # the step's own peak: RSS high-water mark (CPU), peak allocated (CUDA)
    boundaries: dict[str, dict[str, int]] = field(default_factory=dict)  # phase -> reading -> bytes

    @property
    def rest(self) -> int:
        return self.peak - self.runtime - sum(self.measured.values())

    def metrics(self) -> dict[str, float]:
        """The figures as MLflow metrics, in MiB (names: memopt.vocabulary.Metric)."""
        values = {Metric.STEP_PEAK_MB: self.peak / MIB, Metric.RUNTIME_MB: self.runtime / MIB, Metric.REST_MB: self.rest / MIB}
        for part, measured in self.measured.items():
            values[Metric.memory_part(part)] = measured / MIB
            if self.estimate.get(part) is not None:
                values[Metric.memory_part(part, estimate=True)] = self.estimate[part] / MIB
        for phase, readings in self.boundaries.items():
            values.update({Metric.memory_at(phase, reading): v / MIB for reading, v in readings.items()})
        return values


class StepMemory:
    """The trainer's probe: `measuring(step)` around a training step and `boundary(phase)` at its phase
    boundaries measure the step `at_step` and do nothing on the others; the result is `take()`n once."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, runtime_bytes: int,
                 expected_state: Callable[[], int], activation_shape: tuple[int, int] | None):
        self.model, self.optimizer, self.cuda, self.runtime = model, optimizer, device.type == "cuda", runtime_bytes
        self.expected_state, self.activation_shape = expected_state, activation_shape
        self.at_step = 0  # set by the trainer before its loop
        self._meter: SavedTensorMeter | None = None
        self._boundaries: dict[str, dict[str, int]] = {}
        self._gradients = 0
        self._result: Breakdown | None = None

    def _reading(self) -> dict[str, int]:
        return {"rss": rss_bytes(), **({"cuda_allocated": torch.cuda.memory_allocated()} if self.cuda else {})}

    def _gradients_now(self) -> int:
        return storage_bytes(p.grad for p in self.model.parameters())

    @contextlib.contextmanager
    def measuring(self, step: int) -> Iterator[None]:
        if step != self.at_step:
            yield
            return
        expected = estimate(self.model, self.optimizer, self.activation_shape)  # the trainable tensors of now
        self._boundaries = {"step_start": self._reading()}
        if self.cuda:
            reset_cuda_peak()
        else:
            reset_peak_rss()
        with SavedTensorMeter(exclude=self.model.parameters()) as meter:
            self._meter = meter
            try:
                yield
            finally:
                self._meter = None
        # since the reset (where the kernel refused it, the process's peak so far: an upper bound)
        peak = torch.cuda.max_memory_allocated() if self.cuda else rss_high_water_bytes()
        self._result = Breakdown(
            step, "cuda" if self.cuda else "cpu",
            measured={MemoryPart.WEIGHTS: storage_bytes([*self.model.parameters(), *self.model.buffers()]),
                      MemoryPart.GRADIENTS: self._gradients,
                      MemoryPart.OPTIMIZER_STATE: optimizer_state_bytes(self.optimizer),
                      MemoryPart.ACTIVATIONS: meter.peak},
            estimate={**expected, MemoryPart.OPTIMIZER_STATE: self.expected_state()},
            runtime=self.runtime, peak=peak, boundaries=self._boundaries,
        )

    def boundary(self, phase: str) -> None:
        """A phase of the measured step has ended (`PHASES`); nothing on any other step."""
        if self._meter is None:
            return
        self._boundaries[phase] = self._reading()
        if phase == "backward":
            self._gradients = self._gradients_now()

    def take(self) -> Breakdown | None:
        result, self._result = self._result, None
        return result

