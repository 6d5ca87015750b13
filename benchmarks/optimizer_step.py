"""Optimizer step time on llama-60m shapes: memopt GaLore vs torch AdamW (foreach) vs the authors' galore_torch.

Only `optimizer.step()` is timed, on the real llama-60m parameter shapes with fixed random gradients
(no forward/backward). GaLore is amortized over `--periods` projector periods of `--gap` steps
(SVD refreshes included: steps 0, T, 2T, ... plus the first step of the next period).
Run: python -m benchmarks.optimizer_step [--gap 200] [--periods 2]
"""
from __future__ import annotations

import argparse
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


def timed(opt: torch.optim.Optimizer, steps: int, warmup: int = 0) -> float:
    for _ in range(warmup):
        opt.step()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gap", type=int, default=200)
    ap.add_argument("--periods", type=int, default=2)
    ap.add_argument("--rank", type=int, default=128)
    ap.add_argument("--adamw-steps", type=int, default=50)
    args = ap.parse_args()
    steps = args.gap * args.periods + 1  # includes the SVD at the start of every period and the next one's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from galore_torch import GaLoreAdamW as AuthorsGaLore

    model = setup()
    adamw = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    t_adamw = timed(adamw, args.adamw_steps, warmup=3)
    del adamw, model

    ours_model = setup()
    ours = GaLoreAdamW(galore_param_groups(ours_model, args.rank, args.gap, 0.25), lr=0.01, weight_decay=0.0)
    t_ours = timed(ours, steps)

    theirs_model = setup()
    theirs = AuthorsGaLore(galore_param_groups(theirs_model, args.rank, args.gap, 0.25), lr=0.01, no_deprecation_warning=True)
    t_theirs = timed(theirs, steps)

    diffs = [((a - b).norm() / b.norm()).item() for a, b in zip(ours_model.parameters(), theirs_model.parameters())]
    max_diff = max(diffs)
    r_adamw, r_theirs = t_ours / t_adamw, t_ours / t_theirs
    print(f"torch AdamW foreach: {t_adamw * 1e3:.1f} ms/step ({args.adamw_steps} steps)")
    print(f"memopt GaLore:       {t_ours * 1e3:.1f} ms/step amortized over {steps} steps (gap {args.gap})")
    print(f"galore_torch:        {t_theirs * 1e3:.1f} ms/step amortized over {steps} steps")
    print(f"GaLore / AdamW = {r_adamw:.3f} (target <= 1.30); GaLore / galore_torch = {r_theirs:.3f} (target <= 0.80)")
    print(f"max relative param difference memopt vs galore_torch after {steps} steps: {max_diff:.2e}")
    rows = [
        ["torch.optim.AdamW (foreach)", f"{t_adamw * 1e3:.1f}", f"{args.adamw_steps} steps after 3 warm-up", "1.000"],
        ["memopt GaLoreAdamW", f"{t_ours * 1e3:.1f}", f"{steps} steps (gap {args.gap}, {args.periods} periods + 1)", f"{r_adamw:.3f}"],
        ["galore_torch.GaLoreAdamW (authors)", f"{t_theirs * 1e3:.1f}", f"{steps} steps", f"{t_theirs / t_adamw:.3f}"],
    ]
    body = (
        f"llama-60m shapes (fp32, vocab 32000), rank {args.rank}, scale 0.25; only `step()` is timed, with fixed "
        "random gradients. GaLore times are amortized over whole projector periods, SVD refreshes included.\n\n"
        + markdown_table(["optimizer", "ms / step", "averaged over", "÷ AdamW"], rows)
        + f"\n\nmemopt GaLore ÷ torch AdamW = **{r_adamw:.3f}** (target ≤ 1.30); "
        f"memopt GaLore ÷ galore_torch = **{r_theirs:.3f}** (target ≤ 0.80); "
        f"max relative parameter difference memopt vs galore_torch after {steps} steps: {max_diff:.1e}."
    )
    write_section("optimizer_step", "Optimizer step time (GaLore)", body)


if __name__ == "__main__":
    main()
