"""Training-step time per method, interleaved step by step, ÷ AdamW, projector refreshes amortized.

Run: python -m benchmarks.step_time [--model llama-9m] [--vocab 4096] [--batch 8] [--seq 128] [--reps 20] [--refreshes 3]
     python -m benchmarks.step_time --model llama-60m --vocab 32000 --batch 4 --seq 256 --methods adamw,galore --reps 20

All methods live in one process, each with its own model (same init) and optimizer, built as the pipeline
builds it (CompareConfig hyperparameters, run facts with total_steps = the steps run here); one timed step
(forward, backward, `optimizer.step(closure)`, `zero_grad`) of each method in turn, order rotated every round,
`--reps` rounds after 2 untimed warm-up rounds, so a burst of load falls on every method alike. Medians.
Seeded random tokens (vocab 4096 by default: the upper bound of the embedded default's tokenizer).
Step-level interleaving is what the sequential flow cannot give.

A few dozen ordinary steps never reach a projector refresh (GaLore's SVDs every 200 steps), and 200 whole
steps per method are too slow on llama-60m, so the refresh step is timed on its own: `--refreshes` more
rounds in which every method with a projector (GaLore, Fira, GoLore, layer-wise GaLore, APOLLO) takes one
step with its projected param groups' update_proj_gap set to 1 (their code refreshes when the step counter
is a multiple of the group's gap, read at every step), then gets its gap back. Amortized step =
ordinary + (refresh − ordinary) / update_proj_gap.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from benchmarks.common import markdown_table, write_section
from memopt import optim
from memopt.config import CompareConfig
from memopt.loss import CausalLMLoss
from memopt.methods import run_hyperparameters
from memopt.models import build_model


FUSED_ADAMW = "adamw (fused)"


def projected_groups(opt: torch.optim.Optimizer) -> list[dict]:
    """The param groups whose projector is refreshed every `update_proj_gap` steps."""
    return [g for g in opt.param_groups if g.get("rank") is not None and "update_proj_gap" in g]


def timed_step(method: str, loss_of: CausalLMLoss, opt: torch.optim.Optimizer, x: torch.Tensor, refresh: bool = False) -> float:
    groups = projected_groups(opt) if refresh else []
    gaps = [g["update_proj_gap"] for g in groups]
    for g in groups:
        g["update_proj_gap"] = 1  # every step counter is a multiple of 1: this step refreshes every projector
    try:
        t0 = time.perf_counter()
        loss = loss_of(x)
        optim.backward(method, opt, loss)
        opt.step(lambda: loss.detach())
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0
    finally:
        for g, gap in zip(groups, gaps):
            g["update_proj_gap"] = gap


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama-9m")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--refreshes", type=int, default=3, help="timed refresh steps per method with a projector")
    p.add_argument("--methods", default=",".join(optim.METHODS))
    p.add_argument("--no_fused_adamw", action="store_true", help="leave out torch's fused AdamW contender")
    a = p.parse_args()
    if a.reps < 2 or a.refreshes < 1:
        p.error("--reps must be >= 2 (quartiles) and --refreshes >= 1")
    methods = [m for m in a.methods.split(",") if m]
    steps = 2 + a.reps + a.refreshes  # the run the optimizers are told about (GoLore places its switch by it)
    # torch's fused AdamW rides along with the registry's foreach one: the fastest AdamW torch has
    labels = methods + ([FUSED_ADAMW] if "adamw" in methods and not a.no_fused_adamw else [])
    method_of = {m: "adamw" if m == FUSED_ADAMW else m for m in labels}
    contenders = {}
    for m in labels:
        model = build_model(a.model, vocab_size=a.vocab, seed=0)
        model.config.use_cache = False
        hp = {**run_hyperparameters(method_of[m], total_steps=steps, accumulation_steps=1),
              **CompareConfig(methods=[method_of[m]], model_name=a.model).method_hyperparameters(method_of[m]),
              **({"fused": True} if m == FUSED_ADAMW else {})}
        contenders[m] = (CausalLMLoss(model), optim.build(method_of[m], model, **hp), hp)  # the engine's loss
    gen = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {m: [] for m in labels}
    loads = []
    start = time.perf_counter()
    for rnd in range(2 + a.reps):
        x = torch.randint(0, a.vocab, (a.batch, a.seq), generator=gen)
        loads.append(os.getloadavg()[0])
        for m in labels[rnd % len(labels):] + labels[: rnd % len(labels)]:
            t = timed_step(method_of[m], *contenders[m][:2], x)
            if rnd >= 2:
                times[m].append(t)
    refreshing = [m for m in labels if projected_groups(contenders[m][1])]
    refresh: dict[str, list[float]] = {m: [] for m in refreshing}
    for rnd in range(a.refreshes if refreshing else 0):
        x = torch.randint(0, a.vocab, (a.batch, a.seq), generator=gen)
        loads.append(os.getloadavg()[0])
        for m in refreshing[rnd % len(refreshing):] + refreshing[: rnd % len(refreshing)]:
            refresh[m].append(timed_step(method_of[m], *contenders[m][:2], x, refresh=True))
    wall = time.perf_counter() - start

    amortized = {}
    for m in labels:
        ordinary = statistics.median(times[m])
        gap = optim.hyperparameters(method_of[m], **contenders[m][2]).get("update_proj_gap")
        amortized[m] = ordinary + (statistics.median(refresh[m]) - ordinary) / gap if m in refresh else ordinary
    tokens = a.batch * a.seq
    ref, ref_fused = amortized.get("adamw"), amortized.get(FUSED_ADAMW)
    rows = []
    for m in labels:
        q = statistics.quantiles(times[m], n=4)
        rows.append([m, ", ".join(f"{k}={v}" for k, v in contenders[m][2].items()) or "defaults",
                     f"{statistics.median(times[m]) * 1e3:.1f}", f"{q[0] * 1e3:.1f}–{q[2] * 1e3:.1f}",
                     f"{statistics.median(refresh[m]) * 1e3:.1f}" if m in refresh else "—",
                     f"{amortized[m] * 1e3:.1f}", f"{tokens / amortized[m]:,.0f}",
                     f"**{ref / amortized[m]:.3f}**" if ref else "—",
                     f"{ref_fused / amortized[m]:.3f}" if ref_fused else "—"])
    target = ""
    if ref and "galore" in amortized:
        target = (f"\n\nGaLore ÷ AdamW tokens/s, amortized: **{ref / amortized['galore']:.3f}** "
                  "(target ≥ 0.97 on llama-60m, CPU)"
                  + (f"; ÷ torch's fused AdamW: {ref_fused / amortized['galore']:.3f}." if ref_fused else "."))
    body = (
        f"`{a.model}` (vocab {a.vocab}, fp32), batch {a.batch} × seq {a.seq} = {tokens} tokens per step; {a.reps} rounds of "
        f"one step per method in turn (order rotated) after 2 warm-up rounds, medians; then {a.refreshes} rounds of one "
        "refresh step (update_proj_gap set to 1 for that step) per method with a projector, medians. Amortized ms / step "
        "= ordinary + (refresh − ordinary) / update_proj_gap; tokens/s = tokens per step ÷ amortized step. AdamW is the "
        "registry's `adamw`: `torch.optim.AdamW(foreach=True)`, as the pipeline runs it; `adamw (fused)` is the same "
        "method with `fused=True` (torch's fused kernel), the last column's yardstick. Not amortized here (see "
        "`optimizer_step`): ReLoRA's merges, LoRO's exact steps, SPAM's and Stable-SPAM's moment resets, BlockLLM's "
        f"re-selections. GoLore is told total_steps = {steps}, so its refresh steps here come after its switch and draw "
        f"random QR projectors, not SVDs. Load average (1 min) over the rounds: min {min(loads):.2f}, median "
        f"{statistics.median(loads):.2f}, max {max(loads):.2f}; timed rounds {wall / 60:.1f} min.\n\n"
        + markdown_table(["method", "settings", "median ms / step", "interquartile ms", "refresh step ms",
                          "amortized ms / step", "tokens / s", "tokens/s ÷ AdamW", "÷ AdamW (fused)"], rows)
        + target
    )
    # One section per model, so the llama-60m GaLore check does not replace the llama-9m table.
    name = "step_time" if a.model == "llama-9m" else f"step_time_{a.model}"
    write_section(name, f"Training-step time per method, interleaved ({a.model})", body)
    print(body)


if __name__ == "__main__":
    main()
