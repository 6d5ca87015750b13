"""Optimizer step time on llama-60m shapes: memopt GaLore vs torch AdamW (foreach) vs the authors' galore_torch.

Only `optimizer.step()` is timed, on the real llama-60m parameter shapes with fixed random gradients
(no forward/backward). GaLore is amortized over `--periods` projector periods of `--gap` steps
(SVD refreshes included: steps 0, T, 2T, ... plus the first step of the next period).
Run: python -m benchmarks.optimizer_step [--gap 200] [--periods 2]
"""
from __future__ import annotations

import argparse
import os
import time
import warnings

import torch

from benchmarks.common import markdown_table, write_section
from memopt.models import build_model
from memopt.optim.galore import GaLoreAdamW, galore_param_groups


def setup(seed: int = 0):
    model = build_model("llama-60m", seed=seed)
    gen = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen) * 1e-2
    return model


def interleaved(opts: dict[str, tuple[torch.optim.Optimizer, int]], rounds: int) -> dict[str, float]:
    """Seconds per step for each optimizer, run in alternating rounds (order rotated every round), so
    that load from other processes on the machine falls on all of them alike."""
    total = {name: 0.0 for name in opts}
    count = {name: 0 for name in opts}
    names = list(opts)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            opt, n = opts[name]
            t0 = time.perf_counter()
            for _ in range(n):
                opt.step()
            total[name] += time.perf_counter() - t0
            count[name] += n
    return {name: total[name] / count[name] for name in opts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gap", type=int, default=200)
    ap.add_argument("--periods", type=int, default=2)
    ap.add_argument("--rank", type=int, default=128)
    ap.add_argument("--round", type=int, default=10, help="GaLore steps per round (AdamW gets a fifth of it)")
    args = ap.parse_args()
    steps = args.gap * args.periods  # SVDs at steps 0, T, ...; the extra step below starts the next period
    if steps % args.round:
        ap.error("--gap * --periods must be a multiple of --round")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from galore_torch import GaLoreAdamW as AuthorsGaLore

    adamw_model, ours_model, theirs_model = setup(), setup(), setup()
    adamw = torch.optim.AdamW(adamw_model.parameters(), lr=1e-3, foreach=True)
    for _ in range(3):
        adamw.step()  # state allocation is not a step's cost
    ours = GaLoreAdamW(galore_param_groups(ours_model, args.rank, args.gap, 0.25), lr=0.01)
    theirs = AuthorsGaLore(galore_param_groups(theirs_model, args.rank, args.gap, 0.25), lr=0.01, no_deprecation_warning=True)
    load_before = os.getloadavg()[0]
    per_round = max(1, args.round // 5)
    times = interleaved({"adamw": (adamw, per_round), "ours": (ours, args.round), "theirs": (theirs, args.round)},
                        rounds=steps // args.round)
    extra = interleaved({"ours": (ours, 1), "theirs": (theirs, 1)}, rounds=1)  # first step of the next period (SVD)
    steps += 1
    for k in ("ours", "theirs"):
        times[k] = (times[k] * (steps - 1) + extra[k]) / steps
    t_adamw, t_ours, t_theirs = times["adamw"], times["ours"], times["theirs"]
    adamw_steps = per_round * (steps // args.round)
    load_after = os.getloadavg()[0]

    diffs = [((a - b).norm() / b.norm()).item() for a, b in zip(ours_model.parameters(), theirs_model.parameters())]
    max_diff = max(diffs)
    r_adamw, r_theirs = t_ours / t_adamw, t_ours / t_theirs
    print(f"torch AdamW foreach: {t_adamw * 1e3:.1f} ms/step ({adamw_steps} steps)")
    print(f"memopt GaLore:       {t_ours * 1e3:.1f} ms/step amortized over {steps} steps (gap {args.gap})")
    print(f"galore_torch:        {t_theirs * 1e3:.1f} ms/step amortized over {steps} steps")
    print(f"GaLore / AdamW = {r_adamw:.3f} (target <= 1.30); GaLore / galore_torch = {r_theirs:.3f} (target <= 0.80)")
    print(f"max relative param difference memopt vs galore_torch after {steps} steps: {max_diff:.2e}")
    rows = [
        ["torch.optim.AdamW (foreach)", f"{t_adamw * 1e3:.1f}", f"{adamw_steps} steps after 3 warm-up", "1.000"],
        ["memopt GaLoreAdamW", f"{t_ours * 1e3:.1f}", f"{steps} steps (gap {args.gap}, {args.periods} periods + 1)", f"{r_adamw:.3f}"],
        ["galore_torch.GaLoreAdamW (authors)", f"{t_theirs * 1e3:.1f}", f"{steps} steps", f"{t_theirs / t_adamw:.3f}"],
    ]
    body = (
        f"llama-60m shapes (fp32, vocab 32000), rank {args.rank}, scale 0.25; only `step()` is timed, with fixed "
        "random gradients. GaLore times are amortized over whole projector periods, SVD refreshes included.\n\n"
        + markdown_table(["optimizer", "ms / step", "averaged over", "÷ AdamW"], rows)
        + f"\n\nmemopt GaLore ÷ torch AdamW = **{r_adamw:.3f}** (target ≤ 1.30); "
        f"memopt GaLore ÷ galore_torch = **{r_theirs:.3f}** (target ≤ 0.80); "
        f"max relative parameter difference memopt vs galore_torch after {steps} steps: {max_diff:.1e}. "
        f"The three run interleaved in rounds ({args.round} GaLore steps, {per_round} AdamW steps each, order rotated); "
        f"1-minute load average {load_before:.1f} before, {load_after:.1f} after (2 cores: other processes were running)."
    )
    write_section("optimizer_step", "Optimizer step time (GaLore)", body)


if __name__ == "__main__":
    main()
