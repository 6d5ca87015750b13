"""Process memory: the kernel's high-water mark and a timeline sampler.

The sampler is a daemon thread that reads the process RSS every `interval_s`
seconds and tags each sample with the training step the loop last published.
On CUDA it adds torch's allocated/reserved/peak and, when NVML is importable,
the device's used memory (what the seeds log through nvidia-smi).
"""
from __future__ import annotations

import resource
import threading
import time
from dataclasses import dataclass
from typing import Callable

import psutil
import torch

MIB = 1024 * 1024


# What the peaks were before a reset (memopt/breakdown.py resets them to read one training step's own peak):
# the process's peak is the larger of this and the current high-water mark.
_peaks_before_reset = {"rss": 0, "cuda": 0}


def rss_high_water_bytes() -> int:
    """The kernel's high-water mark of this process's own resident set (VmHWM) since the last reset.

    Read from /proc/self/status, not getrusage: Linux carries ru_maxrss across exec, so a training process
    started by the flow (fork or vfork, then exec) would report at least the flow process's own peak, and a
    thread that exits folds the high-water mark of before a reset back in."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):  # no procfs: the rusage figure, the best there is
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def peak_rss_bytes() -> int:
    """The high-water mark of this process's resident set over its whole life, resets included."""
    return max(_peaks_before_reset["rss"], rss_high_water_bytes())


def reset_peak_rss() -> bool:
    """Start the kernel's high-water mark afresh from the current RSS (Linux: /proc/self/clear_refs), keeping the
    process's peak so far for `peak_rss_bytes`. False where the kernel does not allow it."""
    peak = peak_rss_bytes()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    _peaks_before_reset["rss"] = peak
    return True


def cuda_peak_allocated_bytes() -> int:
    """torch's peak of allocated CUDA memory over the whole process."""
    return max(_peaks_before_reset["cuda"], torch.cuda.max_memory_allocated())


def reset_cuda_peak() -> None:
    _peaks_before_reset["cuda"] = cuda_peak_allocated_bytes()
    torch.cuda.reset_peak_memory_stats()


def rss_bytes() -> int:
    return psutil.Process().memory_info().rss


@dataclass(frozen=True)
class MemorySample:
    step: int
    timestamp_ms: int
    values_mb: dict[str, float]


def _nvml_used_reader() -> Callable[[], float] | None:
    if not torch.cuda.is_available():
        return None
    try:
        import pynvml  # optional: nvidia-ml-py
    except ImportError:
        return None
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
    return lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).used / MIB


def read_memory(nvml_used: Callable[[], float] | None = None) -> dict[str, float]:
    values = {"memory_rss_mb": rss_bytes() / MIB}
    if torch.cuda.is_available():
        values["cuda_allocated_mb"] = torch.cuda.memory_allocated() / MIB
        values["cuda_reserved_mb"] = torch.cuda.memory_reserved() / MIB
        values["cuda_peak_allocated_mb"] = cuda_peak_allocated_bytes() / MIB
        if nvml_used is not None:
            values["nvml_used_mb"] = nvml_used()
    return values


class MemorySampler:
    """Samples memory every `interval_s` on its own thread; `on_sample` receives each sample."""

    def __init__(self, interval_s: float, on_sample: Callable[[MemorySample], None]):
        if interval_s <= 0:
            raise ValueError(f"memory sample interval must be > 0 seconds, got {interval_s}")
        self.interval_s = interval_s
        self.on_sample = on_sample
        self.step = 0  # published by the training loop; an int store is atomic under the GIL
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._nvml_used = _nvml_used_reader()

    def _sample(self) -> None:
        self.on_sample(MemorySample(self.step, int(time.time() * 1000), read_memory(self._nvml_used)))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> "MemorySampler":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
