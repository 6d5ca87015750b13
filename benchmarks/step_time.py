"""Training-step time per method, interleaved step by step, ÷ AdamW.

Run: python -m benchmarks.step_time [--model llama-9m] [--batch 8] [--seq 128] [--reps 20]

All methods live in one process, each with its own model (same init) and optimizer (the
pipeline's hyperparameters); one timed step (forward, backward, `optimizer.step(closure)`,
`zero_grad`) of each method in turn, `--reps` rounds after 2 untimed warm-up rounds, so a burst of
load falls on every method alike. Medians. Seeded random tokens (vocab 4096: the upper bound of the
embedded default's tokenizer). Step-level interleaving is what the sequential flow cannot give.
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
from memopt.models import build_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="llama-9m")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--methods", default=",".join(optim.METHODS))
    a = p.parse_args()
    methods = [m for m in a.methods.split(",") if m]
    contenders = {}
    for m in methods:
        model = build_model(a.model, vocab_size=a.vocab, seed=0)
        model.config.use_cache = False
        hp = CompareConfig(methods=[m], model_name=a.model).method_hyperparameters(m)
        contenders[m] = (model, optim.build(m, model, **hp), hp)
    gen = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {m: [] for m in methods}
    loads = []
    for rnd in range(2 + a.reps):
        x = torch.randint(0, a.vocab, (a.batch, a.seq), generator=gen)
        loads.append(os.getloadavg()[0])
        for m in methods:
            model, opt, _ = contenders[m]
            t0 = time.perf_counter()
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            opt.step(lambda: loss.detach())
            opt.zero_grad(set_to_none=True)
            if rnd >= 2:
                times[m].append(time.perf_counter() - t0)
    ref = statistics.median(times["adamw"])
    rows = []
    for m in methods:
        med = statistics.median(times[m])
        q = statistics.quantiles(times[m], n=4)
        rows.append([m, ", ".join(f"{k}={v}" for k, v in contenders[m][2].items()) or "defaults",
                     f"{med * 1000:.1f}", f"{q[0] * 1000:.1f}–{q[2] * 1000:.1f}", f"**{med / ref:.2f}**"])
    body = (
        f"`{a.model}` (vocab {a.vocab}, fp32), batch {a.batch} × seq {a.seq}; {a.reps} rounds of one step per method "
        f"in turn after 2 warm-up rounds, medians. Load average (1 min) over the rounds: min {min(loads):.2f}, "
        f"median {statistics.median(loads):.2f}, max {max(loads):.2f}. Periodic work (GaLore's SVD every 200 steps, "
        "APOLLO's projector refresh, ReLoRA's merges, LoRO's exact steps) falls outside so few steps: these are "
        "ordinary steps.\n\n"
        + markdown_table(["method", "settings", "median ms / step", "interquartile ms", "÷ AdamW"], rows)
    )
    write_section("step_time", "Training-step time per method, interleaved", body)
    print(body)


if __name__ == "__main__":
    main()
