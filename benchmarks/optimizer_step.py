"""Optimizer step time per method ÷ torch AdamW (foreach) on real parameter shapes, and GaLore ÷ the authors' galore_torch.

Run: python -m benchmarks.optimizer_step [--models llama-20m,llama-60m] [--methods all] [--steps 401] [--round 10] [--group 0]
     (--method_args '{"galore": {"update_proj_gap": 10}}' as the pipeline takes it: for short test runs)

Only `optimizer.step(closure)` is timed (the closure returns a constant loss: no forward, no backward), on
each model's parameters with fixed seeded random gradients, set after the optimizer is built (Low-Rank,
SLTrain, ReLoRA and LoRO replace modules, BlockLLM freezes tensors) and kept: BlockLLM drops the gradients
of the tensors it does not select itself. Each method is built as the pipeline builds it: CompareConfig's
hyperparameters (rank = hidden/4) plus the run facts with total_steps = --steps. Every method runs --steps
steps, so its periodic work inside that window is amortized; the default 401 is two GaLore/APOLLO projector
periods of 200 plus the first step of the next (refreshes at steps 1, 201, 401). The table says which periodic
work falls inside: at the defaults SPAM's reset and LoRO's exact step (500), Stable-SPAM's reset and BlockLLM's
re-selection check (1000) and ReLoRA's merge (2000) do not. Methods that update inside backward (layer-wise
GaLore, AdaLomo) or whose step takes the gradients away (BAdam): listed, not timed (see step_time). Methods run interleaved in rounds of --round steps, order rotated each round, the
yardstick torch.optim.AdamW(foreach=True) (its own model, 3 untimed warm-up steps) in every round, so load from
other processes falls on all alike. One model shape at a time (llama-60m, all methods: 12.2 GB peak RSS);
--group k interleaves k methods at a time, the yardstick in each group, where memory is short.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import torch

from benchmarks.common import markdown_table, write_section
from memopt import optim
from memopt.config import CompareConfig
from memopt.methods import run_hyperparameters
from memopt.models import build_model
from memopt.optim.galore import galore_param_groups

# step() alone cannot be timed on fixed gradients: the update runs in backward, or the step takes the gradients
UNTIMED = {**{m: "steps inside backward" for m in optim.METHODS if optim.spec(m).steps_in_backward},
           "badam": "its step moves the gradients into its fp32 copy of the block (they last one step)"}
YARDSTICK, FUSED, AUTHORS = "torch AdamW (foreach)", "torch AdamW (fused)", "galore_torch (authors)"


def pipeline_optimizer(method: str, model_name: str, model: torch.nn.Module, steps: int, method_args: dict):
    """The optimizer as the training engine (memopt/trainer.py) builds it for a run of `steps` steps, and the hyperparameters it overrides."""
    cfg = CompareConfig(methods=[method], model_name=model_name, method_args={method: method_args.get(method, {})})
    hp = {**run_hyperparameters(method, total_steps=steps, accumulation_steps=1), **cfg.method_hyperparameters(method)}
    return optim.build(method, model, **hp), hp


def set_grads(model: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)  # the same gradients for models of the same shape (GaLore vs galore_torch)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.randn(p.shape, generator=gen) * 1e-2


def events(method: str, h: dict) -> list[tuple[str, int, int]]:
    """(what, first step, period) of the method's periodic work, steps counted from 1, read off its own code."""
    if "update_proj_gap" in h:  # counter read before it moves: refresh at 0-based steps 0, T, 2T, ...
        return [("random projector" if method.startswith("apollo") else "projector SVD", 1, h["update_proj_gap"])]
    if h.get("reset_interval"):
        return [("moment reset" + (" + lr warm-up" if method == "spam" else ""), h["reset_interval"], h["reset_interval"])]
    if "relora_steps" in h:
        return [("merge W += BA, moments pruned", h["relora_steps"], h["relora_steps"])]
    if "exact_every" in h:
        return [("exact retraction (QR, 2r×2r SVD), states zeroed", h["exact_every"], h["exact_every"])]
    if "param_update_interval" in h:  # after the k-th completed step, k a multiple of the interval
        k, f = h["param_update_interval"], h["update_freq"]
        return [("probe of an unselected tensor (no backward here: its cost is not measured)", k + 1, k),
                ("re-selection check (a constant loss never triggers it)", f, f)]
    return []


def periodic(method: str, hp: dict, steps: int) -> str:
    h = optim.hyperparameters(method, **hp)
    parts = []
    for what, first, period in events(method, h):
        at = list(range(first, steps + 1, period))
        where = f"{len(at)} in the window" if at else "none in the window"
        parts.append(f"{what} at steps {first}, {first + period}, …: {where}")
        if method == "golore" and h["rand_ratio"] is not None:  # projectors drawn at 0-based step >= ratio * total
            rand = sum(s - 1 >= h["rand_ratio"] * h["total_steps"] for s in at)
            parts[-1] += f", {rand} of them random QR projectors (switch at {h['rand_ratio']} × {h['total_steps']} steps)"
    return "; ".join(parts) or "none"


def interleaved(opts: dict[str, torch.optim.Optimizer], steps: int, per_round: int, label: str) -> dict[str, float]:
    """Seconds per step of each optimizer over `steps` steps, in rounds of `per_round` steps per optimizer."""
    total = dict.fromkeys(opts, 0.0)
    names, loss = list(opts), torch.tensor(1.0)
    rounds, done, start = -(-steps // per_round), 0, time.perf_counter()
    for r in range(rounds):
        n = min(per_round, steps - done)
        for name in names[r % len(names):] + names[: r % len(names)]:
            opt = opts[name]
            t0 = time.perf_counter()
            for _ in range(n):
                opt.step(lambda: loss)
            total[name] += time.perf_counter() - t0
        done += n
        spent = time.perf_counter() - start
        print(f"[{label}] round {r + 1}/{rounds}: {done}/{steps} steps, {spent:.0f} s, about "
              f"{spent / done * (steps - done):.0f} s left, load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    return {name: total[name] / steps for name in opts}


def run_model(model_name: str, methods: list[str], a: argparse.Namespace) -> tuple[list[list[object]], list[object] | None]:
    """Table rows for one model shape, and the GaLore vs galore_torch row (None without galore)."""
    yard_model = build_model(model_name, seed=0)
    set_grads(yard_model)
    yardstick = torch.optim.AdamW(yard_model.parameters(), lr=1e-3, foreach=True)
    fused_model = build_model(model_name, seed=0)
    set_grads(fused_model)
    fused = torch.optim.AdamW(fused_model.parameters(), lr=1e-3, fused=True)  # torch's fastest AdamW on CPU
    for _ in range(3):
        yardstick.step()  # state allocation is not a step's cost
        fused.step()
    timed = [m for m in methods if m not in UNTIMED]
    groups = [timed[i:i + a.group] for i in range(0, len(timed), a.group)] if a.group else [timed]
    times, ratios, fused_ratios, hps, models, yard_times, fused_times = {}, {}, {}, {}, {}, [], []
    for gi, group in enumerate(groups):
        opts: dict[str, torch.optim.Optimizer] = {YARDSTICK: yardstick, FUSED: fused}
        for m in group:
            models[m] = build_model(model_name, seed=0)
            opts[m], hps[m] = pipeline_optimizer(m, model_name, models[m], a.steps, a.method_args)
            set_grads(models[m])  # after the build: reparameterized modules and frozen tensors are final
            if m == "galore":  # the authors' optimizer on identical inputs, in the same rounds
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    from galore_torch import GaLoreAdamW as AuthorsGaLore
                h = optim.hyperparameters("galore", **hps[m])
                models[AUTHORS] = build_model(model_name, seed=0)
                opts[AUTHORS] = AuthorsGaLore(
                    galore_param_groups(models[AUTHORS], h["rank"], h["update_proj_gap"], h["scale"], h["proj_type"]),
                    lr=h["lr"], betas=h["betas"], eps=h["eps"], weight_decay=h["weight_decay"], no_deprecation_warning=True)
                set_grads(models[AUTHORS])
        label = model_name + (f" group {gi + 1}/{len(groups)}" if len(groups) > 1 else "")
        t = interleaved(opts, a.steps, a.round, label)
        yard_times.append(t[YARDSTICK])
        fused_times.append(t[FUSED])
        for name in opts:
            if name not in (YARDSTICK, FUSED):  # against the yardsticks of the same rounds
                times[name], ratios[name], fused_ratios[name] = t[name], t[name] / t[YARDSTICK], t[name] / t[FUSED]
        for name in [n for n in opts if n not in ("galore", AUTHORS, YARDSTICK, FUSED)]:
            del opts[name], models[name]  # free the group's memory before the next one
    t_yard, t_fused = sum(yard_times) / len(yard_times), sum(fused_times) / len(fused_times)
    rows = [[YARDSTICK + ", the yardstick", "lr=0.001, after 3 warm-up steps", f"{t_yard * 1e3:.1f}", "1.000",
             f"{t_yard / t_fused:.2f}", "none"],
            [FUSED, "lr=0.001, after 3 warm-up steps", f"{t_fused * 1e3:.1f}", f"{t_fused / t_yard:.3f}", "1.00", "none"]]
    for m in methods:
        settings = ", ".join(f"{k}={v}" for k, v in hps.get(m, {}).items()) or "defaults"
        if m in UNTIMED:
            rows.append([m, settings, "—", "—", "—", f"{UNTIMED[m]}: see the whole-step table (`step_time`)"])
            continue
        rows.append([m, settings, f"{times[m] * 1e3:.1f}", f"{ratios[m]:.3f}", f"{fused_ratios[m]:.2f}",
                     periodic(m, hps[m], a.steps)])
        if m == "galore":
            rows.append([AUTHORS, "as galore", f"{times[AUTHORS] * 1e3:.1f}", f"{ratios[AUTHORS]:.3f}",
                         f"{fused_ratios[AUTHORS]:.2f}", "as galore"])
    if "galore" not in timed:
        return rows, None
    ours, theirs = models["galore"], models[AUTHORS]
    diff = max(((x - y).norm() / y.norm()).item() for x, y in zip(ours.parameters(), theirs.parameters()))
    t_ours, t_theirs = times["galore"], times[AUTHORS]
    return rows, [model_name, f"{t_ours * 1e3:.1f}", f"{t_theirs * 1e3:.1f}", f"**{t_ours / t_theirs:.3f}**", f"{diff:.1e}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="llama-20m,llama-60m")
    ap.add_argument("--methods", default=",".join(optim.METHODS))
    ap.add_argument("--steps", type=int, default=401, help="steps per method (401: GaLore/APOLLO refreshes at 1, 201, 401)")
    ap.add_argument("--round", type=int, default=10, help="steps per method per round")
    ap.add_argument("--group", type=int, default=0, help="methods interleaved at a time (0: all; AdamW in every group)")
    ap.add_argument("--method_args", type=json.loads, default={}, help='the pipeline\'s, e.g. \'{"galore": {"update_proj_gap": 10}}\'')
    ap.add_argument("--section", default="optimizer_step", help="the BENCHMARKS.md section written (a subset's own)")
    a = ap.parse_args()
    models, methods = [m for m in a.models.split(",") if m], [m for m in a.methods.split(",") if m]
    for m in methods:
        optim.spec(m)  # an unknown name fails now, not after the first model
    torch.linalg.svd(torch.randn(64, 32))  # the process's first SVD and QR initialize the library: no step's cost
    torch.linalg.qr(torch.randn(64, 32))
    sections, authors, loads = [], [], []
    start = time.perf_counter()
    for model_name in models:
        before = os.getloadavg()[0]
        rows, authors_row = run_model(model_name, methods, a)
        loads.append((model_name, before, os.getloadavg()[0]))
        sections.append(f"### {model_name} shapes\n\n"
                        + markdown_table(["method", "settings", "ms / step, amortized", "÷ AdamW (foreach)",
                                          "÷ AdamW (fused)", f"periodic work within the {a.steps} steps"], rows))
        authors += [authors_row] if authors_row else []
        print(sections[-1], flush=True)
    wall = time.perf_counter() - start
    grouping = (f"in groups of {a.group} methods (memory), the yardstick in each: a ratio is against the yardstick's time in "
                "its own group, the yardstick row is their mean" if a.group else "all methods of a shape together")
    body = (
        f"Only `optimizer.step(closure)` is timed (constant loss, no forward/backward), fp32, vocab 32000, with fixed "
        f"seeded random gradients set after each optimizer is built. Each method is built as the pipeline builds it "
        f"(CompareConfig hyperparameters, rank = hidden/4; run facts with total_steps = {a.steps}) and runs {a.steps} "
        f"steps: ms / step is the total over all of them ÷ {a.steps}, so the periodic work listed in the last column "
        "is amortized; work that falls after the window is not. Methods interleaved in rounds of "
        f"{a.round} steps per method, order rotated each round, {grouping}; the yardstick "
        "`torch.optim.AdamW(foreach=True)` (lr 1e-3, 3 untimed warm-up steps) runs in every round, and so does "
        "`torch.optim.AdamW(fused=True)`, torch's fused kernel, the fastest AdamW torch has (the issue's targets are "
        "stated against foreach; the fused column shows what they would be against the fastest); the `adamw` row "
        "is the same optimizer built by the registry (its first step's state allocation included), so its ratio "
        "shows the noise. 1-minute load average before → after: "
        + ", ".join(f"{m} {b:.1f} → {e:.1f}" for m, b, e in loads) + f". Wall time {wall / 60:.1f} min.\n\n"
        + "\n\n".join(sections)
    )
    if authors:
        body += (
            "\n\n### GaLore: memopt ÷ the authors' galore_torch.GaLoreAdamW\n\nIdentical inputs (same init, "
            "gradients, param groups and hyperparameters), timed in the same rounds as above; target ≤ 0.80.\n\n"
            + markdown_table(["shapes", "memopt ms / step", "galore_torch ms / step", "memopt ÷ galore_torch",
                              f"max relative parameter difference after {a.steps} steps"], authors)
        )
    write_section(a.section, "Optimizer step time per method" + (f" ({a.section})" if a.section != "optimizer_step" else ""), body)
    print(body)


if __name__ == "__main__":
    main()
