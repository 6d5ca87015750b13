"""Optimizer step time per method ÷ torch's fused AdamW on real parameter shapes, beside each method's floor
(benchmarks/floor.py), and GaLore ÷ the authors' galore_torch.

Run: python -m benchmarks.optimizer_step [--models llama-20m,llama-60m] [--methods all] [--steps 400] [--round 10]
     [--group 0] [--threads 0]   (--method_args '{"galore": {"update_proj_gap": 10}}' as the pipeline takes it)

Only `optimizer.step(closure)` is timed (the closure returns a constant loss: no forward, no backward), on
each model's parameters with fixed seeded random gradients, set after the optimizer is built (Low-Rank,
SLTrain, ReLoRA and LoRO replace modules, BlockLLM freezes tensors) and kept: BlockLLM drops the gradients
of the tensors it does not select itself. Each method is built as the pipeline builds it: CompareConfig's
hyperparameters (rank = hidden/4) plus the run facts with total_steps = --steps. Every method runs --steps
steps, so its periodic work inside that window is amortized; the default 400 is two GaLore/APOLLO projector
periods of 200 (refreshes at steps 1 and 201). LoRO's exact step comes every 500 steps: it is timed apart
(3 of them after the window) and amortized over its period. The table says which other periodic work falls
inside: at the defaults SPAM's reset (500), Stable-SPAM's reset and BlockLLM's re-selection check (1000) and
ReLoRA's merge (2000) do not. Layer-wise GaLore updates inside backward: listed, not timed (see step_time).
Methods run interleaved in rounds of --round steps, order rotated each round; the yardstick
torch.optim.AdamW(fused=True) (its own model, 3 untimed warm-up steps) and torch's foreach AdamW run in every
round, and so does each method's floor, so load from other processes falls on all alike. One model shape at
a time; --group k interleaves k methods at a time, the yardsticks in each group, where memory is short.
--threads n sets torch's threads (0: torch's default): with 2 cores shared by several busy processes, two
OpenMP threads wait on each other for whole scheduler slices, and one thread measures the work more steadily.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings

import torch

from benchmarks.common import markdown_table, write_section
from benchmarks.floor import AdamPool, build_floor
from memopt import optim
from memopt.config import CompareConfig
from memopt.methods import run_hyperparameters
from memopt.models import build_model
from memopt.optim.galore import galore_param_groups

IN_BACKWARD = ("galore-layerwise",)  # updates run in backward hooks: step() alone times nothing
YARDSTICK, FOREACH, AUTHORS = "torch AdamW (fused)", "torch AdamW (foreach)", "galore_torch (authors)"
FLOOR_TARGET, SPAM_TARGET = 1.25, 1.5  # issue 15: ÷ floor (GaLore, Fira, APOLLO, LoRO); ÷ fused AdamW (SPAMs)
EXACT_STEPS = 3


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
        if what.startswith("exact") and not at:
            where = f"timed apart ({EXACT_STEPS} steps, median), amortized over {period}"
        parts.append(f"{what} at steps {first}, {first + period}, …: {where}")
        if method == "golore" and h["rand_ratio"] is not None:  # projectors drawn at 0-based step >= ratio * total
            rand = sum(s - 1 >= h["rand_ratio"] * h["total_steps"] for s in at)
            parts[-1] += f", {rand} of them random QR projectors (switch at {h['rand_ratio']} × {h['total_steps']} steps)"
    return "; ".join(parts) or "none"


def interleaved(opts: dict, steps: int, per_round: int, label: str, loads: list[float]) -> dict[str, float]:
    """Seconds per step of each optimizer over `steps` steps, in rounds of `per_round` steps per optimizer."""
    total = dict.fromkeys(opts, 0.0)
    names, loss = list(opts), torch.tensor(1.0)
    rounds, done, start = -(-steps // per_round), 0, time.perf_counter()
    for r in range(rounds):
        n = min(per_round, steps - done)
        loads.append(os.getloadavg()[0])
        for name in names[r % len(names):] + names[: r % len(names)]:
            opt = opts[name]
            t0 = time.perf_counter()
            for _ in range(n):
                opt.step(lambda: loss)
            total[name] += time.perf_counter() - t0
        done += n
        spent = time.perf_counter() - start
        print(f"[{label}] round {r + 1}/{rounds}: {done}/{steps} steps, {spent:.0f} s, about "
              f"{spent / done * (steps - done):.0f} s left, load {loads[-1]:.1f}", file=sys.stderr, flush=True)
    return {name: total[name] / steps for name in opts}


def exact_step_seconds(opt: torch.optim.Optimizer) -> float:
    """Median time of LoRO's exact step (the group counter set so that the next step is one)."""
    loss, times = torch.tensor(1.0), []
    for _ in range(EXACT_STEPS):
        for g in opt.param_groups:
            g["t"] = (g["t"] // g["exact_every"] + 1) * g["exact_every"] - 1
        t0 = time.perf_counter()
        opt.step(lambda: loss)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def authors_galore(model_name: str, hp: dict) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The authors' optimizer on inputs identical to memopt's galore (same init, gradients, groups)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from galore_torch import GaLoreAdamW as AuthorsGaLore
    h = optim.hyperparameters("galore", **hp)
    model = build_model(model_name, seed=0)
    opt = AuthorsGaLore(galore_param_groups(model, h["rank"], h["update_proj_gap"], h["scale"], h["proj_type"]),
                        lr=h["lr"], betas=h["betas"], eps=h["eps"], weight_decay=h["weight_decay"],
                        no_deprecation_warning=True)
    set_grads(model)
    return model, opt


def yardsticks(model_name: str) -> dict[str, torch.optim.Optimizer]:
    opts = {}
    for name, kernel in ((YARDSTICK, {"fused": True}), (FOREACH, {"foreach": True})):
        model = build_model(model_name, seed=0)
        set_grads(model)
        opts[name] = torch.optim.AdamW(model.parameters(), lr=1e-3, **kernel)
        for _ in range(3):
            opts[name].step()  # state allocation is not a step's cost
    return opts


def run_model(model_name: str, methods: list[str], a: argparse.Namespace, loads: list[float]):
    """Table rows for one model shape, the GaLore vs galore_torch row (None without galore), and
    {method: (ms, ÷ fused, ÷ floor or None)} for the targets."""
    yard = yardsticks(model_name)
    pool = AdamPool()
    timed = [m for m in methods if m not in IN_BACKWARD]
    groups = [timed[i:i + a.group] for i in range(0, len(timed), a.group)] if a.group else [timed]
    times, hps, floors, models, yard_times = {}, {}, {}, {}, {n: [] for n in yard}  # floors: method -> (s, GFLOP/s)
    for gi, group in enumerate(groups):
        opts = dict(yard)
        for m in group:
            models[m] = build_model(model_name, seed=0)
            opts[m], hps[m] = pipeline_optimizer(m, model_name, models[m], a.steps, a.method_args)
            set_grads(models[m])  # after the build: reparameterized modules and frozen tensors are final
            floor = build_floor(m, opts[m], pool)
            if floor is not None:
                opts[f"floor of {m}"] = floor
            if m == "galore":  # the authors' optimizer on identical inputs, in the same rounds
                models[AUTHORS], opts[AUTHORS] = authors_galore(model_name, hps[m])
        label = model_name + (f" group {gi + 1}/{len(groups)}" if len(groups) > 1 else "")
        t = interleaved(opts, a.steps, a.round, label, loads)
        for name in yard:
            yard_times[name].append(t[name])
        for name in opts:
            if name not in yard:  # against the yardstick of the same rounds
                times[name] = (t[name], t[name] / t[YARDSTICK])
        for m in group:
            if f"floor of {m}" in opts:
                floors[m] = (t[f"floor of {m}"], opts[f"floor of {m}"].gflops())
        if "loro" in group:  # its exact step falls after the window: timed apart, amortized over its period
            every = optim.hyperparameters("loro", **hps["loro"])["exact_every"]
            ordinary = t["loro"]
            amortized = ordinary + (exact_step_seconds(opts["loro"]) - ordinary) / every
            times["loro"] = (amortized, amortized / t[YARDSTICK])
        for name in [n for n in opts if n not in ("galore", AUTHORS, *yard)]:
            del opts[name]
            models.pop(name, None)  # free the group's memory before the next one
    t_yard = statistics.mean(yard_times[YARDSTICK])
    t_foreach = statistics.mean(yard_times[FOREACH])
    rows = [[YARDSTICK + ", the yardstick", "lr=0.001, after 3 warm-up steps", f"{t_yard * 1e3:.1f}", "**1.00**",
             "—", "—", "—", "none"],
            [FOREACH, "lr=0.001, after 3 warm-up steps", f"{t_foreach * 1e3:.1f}", f"{t_foreach / t_yard:.2f}",
             "—", "—", "—", "none"]]
    results = {}
    for m in methods:
        settings = ", ".join(f"{k}={v}" for k, v in hps.get(m, {}).items()) or "defaults"
        if m in IN_BACKWARD:
            rows.append([m, settings, "—", "—", "—", "—", "—", "steps inside backward: see the whole-step table (`step_time`)"])
            continue
        (sec, ratio), floor = times[m], floors.get(m)
        floor_cells = ["—", "—", "—"]
        if floor:
            floor_cells = [f"{floor[0] * 1e3:.1f}", f"**{sec / floor[0]:.2f}**", f"{floor[1]:.0f}"]
        results[m] = (sec, ratio, sec / floor[0] if floor else None)
        rows.append([m, settings, f"{sec * 1e3:.1f}", f"**{ratio:.2f}**", *floor_cells, periodic(m, hps[m], a.steps)])
        if m == "galore":
            rows.append([AUTHORS, "as galore", f"{times[AUTHORS][0] * 1e3:.1f}", f"{times[AUTHORS][1]:.2f}", "—", "—",
                         "—", "as galore"])
    if "galore" not in timed:
        return rows, None, results
    ours, theirs = models["galore"], models[AUTHORS]
    diff = max(((x - y).norm() / y.norm()).item() for x, y in zip(ours.parameters(), theirs.parameters()))
    t_ours, t_theirs = times["galore"][0], times[AUTHORS][0]
    return rows, [model_name, f"{t_ours * 1e3:.1f}", f"{t_theirs * 1e3:.1f}", f"**{t_ours / t_theirs:.3f}**", f"{diff:.1e}"], results


def target_lines(results: dict[str, tuple[float, float, float | None]]) -> list[str]:
    """Issue 15's step targets for one shape: each method's figure, met or by how much not."""
    lines = []
    for m, (_, ratio, to_floor) in results.items():
        if to_floor is not None and m in ("galore", "fira", "apollo", "loro"):
            figure, target, what = to_floor, FLOOR_TARGET, "÷ floor"
        elif m in ("spam", "stable-spam"):
            figure, target, what = ratio, SPAM_TARGET, "÷ fused AdamW"
        else:
            continue
        verdict = "met" if figure <= target else f"**not met**, {figure / target:.2f}× the target"
        lines.append(f"{m} {what} {figure:.2f} (target ≤ {target}): {verdict}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="llama-20m,llama-60m")
    ap.add_argument("--methods", default=",".join(optim.METHODS))
    ap.add_argument("--steps", type=int, default=400, help="steps per method (400: two GaLore/APOLLO projector periods)")
    ap.add_argument("--round", type=int, default=10, help="steps per method per round")
    ap.add_argument("--group", type=int, default=0, help="methods interleaved at a time (0: all; the yardsticks in every group)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--method_args", type=json.loads, default={}, help='the pipeline\'s, e.g. \'{"galore": {"update_proj_gap": 10}}\'')
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    models, methods = [m for m in a.models.split(",") if m], [m for m in a.methods.split(",") if m]
    for m in methods:
        optim.spec(m)  # an unknown name fails now, not after the first model
    torch.linalg.svd(torch.randn(64, 32))  # the process's first SVD and QR initialize the library: no step's cost
    torch.linalg.qr(torch.randn(64, 32))
    sections, authors, load_notes = [], [], []
    start = time.perf_counter()
    for model_name in models:
        loads: list[float] = []
        rows, authors_row, results = run_model(model_name, methods, a, loads)
        load = (f"1-minute load average over the rounds: min {min(loads):.1f}, median {statistics.median(loads):.1f}, "
                f"max {max(loads):.1f}")
        targets = target_lines(results)
        sections.append(f"### {model_name} shapes\n\n{load}; torch threads {torch.get_num_threads()}.\n\n"
                        + markdown_table(["method", "settings", "ms / step, amortized", "÷ AdamW (fused)", "floor ms",
                                          "÷ floor", "floor's GEMMs GFLOP/s", f"periodic work within the {a.steps} steps"],
                                         rows)
                        + ("\n\nTargets (issue 15): " + "; ".join(targets) + "." if targets else ""))
        authors += [authors_row] if authors_row else []
        print(sections[-1], flush=True)
    wall = time.perf_counter() - start
    grouping = (f"in groups of {a.group} methods (memory), the yardsticks in each: a ratio is against the yardstick's "
                "time in its own group, the yardstick rows are their means" if a.group else "all methods of a shape together")
    body = (
        f"Only `optimizer.step(closure)` is timed (constant loss, no forward/backward), fp32, vocab 32000, with fixed "
        f"seeded random gradients set after each optimizer is built. Each method is built as the pipeline builds it "
        f"(CompareConfig hyperparameters, rank = hidden/4; run facts with total_steps = {a.steps}) and runs {a.steps} "
        f"steps: ms / step is the total over all of them ÷ {a.steps}, so the periodic work listed in the last column "
        "is amortized; work that falls after the window is not, except LoRO's exact step (timed apart, amortized over "
        f"its period). Methods interleaved in rounds of {a.round} steps per method, order rotated each round, "
        f"{grouping}. The yardstick is `torch.optim.AdamW(fused=True)`, torch's fused kernel (lr 1e-3, 3 untimed "
        "warm-up steps); `torch.optim.AdamW(foreach=True)`, the yardstick before issue 15, runs in the same rounds. "
        "The `adamw` row is the registry's (the same fused kernel, its first step's state allocation included), so "
        "its ratio shows the noise; `adamw-foreach` is the registry's foreach variant. Floor (benchmarks/floor.py): "
        "the method's projection GEMMs on its own shapes plus one fused-Adam pass over the elements it keeps state "
        "for, run as a contender in the same rounds; its GEMM throughput is the GFLOP/s column. "
        f"Wall time {wall / 60:.1f} min.\n\n"
        + "\n\n".join(sections)
    )
    if authors:
        body += (
            "\n\n### GaLore: memopt ÷ the authors' galore_torch.GaLoreAdamW\n\nIdentical inputs (same init, "
            "gradients, param groups and hyperparameters), timed in the same rounds as above; target ≤ 0.80.\n\n"
            + markdown_table(["shapes", "memopt ms / step", "galore_torch ms / step", "memopt ÷ galore_torch",
                              f"max relative parameter difference after {a.steps} steps"], authors)
        )
    write_section("optimizer_step", "Optimizer step time per method", body)
    print(body)


if __name__ == "__main__":
    main()
