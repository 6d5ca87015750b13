"""Tokens/s and peak CUDA memory per method on a GPU: llama-60m and llama-130m, fp32 and bf16, ÷ AdamW.

Run: python -m benchmarks.cuda_throughput [--models llama-60m,llama-130m] [--steps 20] [--methods ...]

On a machine without CUDA it writes what it would measure and says that no GPU was lent
(`--device cpu --models llama-micro` runs the same code on the CPU, as a check of the code, and
writes nothing). Per (model, precision): every method is built fresh, warmed up for 3 steps
(BlockLLM's first selection and GaLore's first SVD fall there), then `--steps` steps are timed
with a synchronize; the contenders alternate round-robin over `--reps`, medians.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import time

import torch

from benchmarks.common import markdown_table, write_section
from memopt import optim
from memopt.config import CompareConfig
from memopt.loss import CausalLMLoss
from memopt.methods import run_hyperparameters
from memopt.models import build_model

MIB = 1024 * 1024


def measure(method: str, model_name: str, bf16: bool, batch: int, seq: int, steps: int, device: str) -> tuple[float, float]:
    """(tokens/s, peak allocated MiB) for `steps` timed steps after 3 warm-up steps."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = build_model(model_name, seed=0).to(device)
    model.config.use_cache = False
    hp = {**run_hyperparameters(method, total_steps=3 + steps, accumulation_steps=1),  # GoLore needs total_steps
          **CompareConfig(methods=[method], model_name=model_name).method_hyperparameters(method)}
    opt = optim.build(method, model, **hp)
    loss_of = CausalLMLoss(model)  # the engine's loss
    amp = torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    gen = torch.Generator().manual_seed(0)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    t0 = 0.0
    for step in range(3 + steps):
        if step == 3:
            sync()
            t0 = time.perf_counter()
        x = torch.randint(0, model.config.vocab_size, (batch, seq), generator=gen).to(device)
        with amp:
            loss = loss_of(x)
        loss.backward()
        opt.step(lambda: loss.detach())
        opt.zero_grad(set_to_none=True)
    sync()
    tokens_per_s = steps * batch * seq / (time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / MIB if device == "cuda" else float("nan")
    del model, opt
    return tokens_per_s, peak


PLAN = """No GPU was lent for this task (the machine: 2 CPU cores, no CUDA), so this table is still to be
measured. What `python -m benchmarks.cuda_throughput` measures on a CUDA machine, per method of
`memopt.optim.METHODS` (the yardstick `adamw`: torch's fused AdamW kernel; `adamw-foreach` beside it):

| model | precision | batch × seq | measured per method | ratios |
|---|---|---|---|---|
| llama-60m | fp32 | {batch} × {seq} | tokens/s, peak `torch.cuda.max_memory_allocated` MiB | ÷ AdamW |
| llama-60m | bf16 autocast | {batch} × {seq} | tokens/s, peak allocated MiB | ÷ AdamW |
| llama-130m | fp32 | {batch} × {seq} | tokens/s, peak allocated MiB | ÷ AdamW |
| llama-130m | bf16 autocast | {batch} × {seq} | tokens/s, peak allocated MiB | ÷ AdamW |

3 warm-up steps (first selection, first SVD), then {steps} timed steps with `torch.cuda.synchronize`,
methods round-robin, medians. The peak CUDA memory is the number the authors report (BlockLLM's
0.68 of AdamW on llama-60m); on the CPU the comparable number is the peak RSS table (`peak_rss`). The code
path has been run on the CPU only (`--device cpu --models llama-micro`), never on a GPU; every method's
Adam update there is torch's fused kernel (memopt.optim.kernels), which has a CUDA build."""


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="llama-60m,llama-130m")
    p.add_argument("--methods", default=",".join(optim.METHODS))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "none")
    a = p.parse_args()
    if a.device == "none":
        write_section("cuda_throughput", "Tokens/s and peak CUDA memory (GPU): not measured here",
                      PLAN.format(batch=a.batch, seq=a.seq, steps=a.steps))
        print("no CUDA: wrote the plan")
        return
    methods = [m for m in a.methods.split(",") if m]
    methods = methods if "adamw" in methods else ["adamw", *methods]  # the yardstick of every ratio
    rows = []
    for model_name in a.models.split(","):
        for bf16 in (False, True):
            res: dict[str, list[tuple[float, float]]] = {m: [] for m in methods}
            for _ in range(a.reps):
                for m in methods:
                    res[m].append(measure(m, model_name, bf16, a.batch, a.seq, a.steps, a.device))
            tps = {m: statistics.median(r[0] for r in res[m]) for m in methods}
            mem = {m: statistics.median(r[1] for r in res[m]) for m in methods}
            for m in methods:
                rows.append([model_name, "bf16" if bf16 else "fp32", m, f"{tps[m]:,.0f}", f"{tps[m] / tps['adamw']:.2f}",
                             f"{mem[m]:.0f}", f"{mem[m] / mem['adamw']:.3f}"])
    table = markdown_table(["model", "precision", "method", "tokens/s", "÷ AdamW (fused)", "peak allocated MiB",
                            "÷ AdamW (fused)"], rows)
    if a.device != "cuda":
        print(table)
        return
    write_section("cuda_throughput", "Tokens/s and peak CUDA memory (GPU)",
                  f"batch {a.batch} × seq {a.seq}, {a.steps} timed steps after 3 warm-up, {a.reps} reps round-robin, medians.\n\n" + table)


if __name__ == "__main__":
    main()
