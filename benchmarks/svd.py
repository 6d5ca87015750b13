"""GaLore's projector refresh: full SVD (the authors') vs randomized SVD, speed and subspace error.

Run: python -m benchmarks.svd [--model llama-60m] [--batch 4] [--seq 256] [--reps 3]

The gradients are real: one forward/backward of the model (random init, seeded random tokens,
vocab 32000, the engine's loss) gives every weight GaLore projects. For each of them, the rank-r
projector (r = the pipeline's rank, hidden/4) is found both ways, `--reps` times interleaved
(medians); a refresh costs the sum over the weights. The error of the randomized projector P is
how much of the gradient it keeps: ‖PᵀG‖² ÷ ‖P_fullᵀG‖² (1 = as much as the exact top-r
subspace, which keeps the most any rank-r projector can), and the distance between the two
subspaces, ‖PPᵀ − P_full P_fullᵀ‖_F ÷ √(2r) (0 = the same subspace, 1 = orthogonal).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from benchmarks.common import markdown_table, write_section
from memopt.config import CompareConfig
from memopt.loss import CausalLMLoss
from memopt.models import build_model
from memopt.optim.galore import RANDOMIZED_NITER, RANDOMIZED_OVERSAMPLE, projector_side, top_singular_vectors
from memopt.optim.targets import split_params


def projector(g: torch.Tensor, rank: int, svd: str) -> torch.Tensor:
    """GaLore's `std` projector as an orthonormal basis of columns (m x r or n x r)."""
    u, vh = top_singular_vectors(g, rank, svd, seed=0)
    return vh.t() if projector_side("std", *g.shape) == "right" else u


def kept(g: torch.Tensor, basis: torch.Tensor) -> float:
    """‖PᵀG‖² on the side `projector` chose."""
    low = g @ basis if projector_side("std", *g.shape) == "right" else basis.t() @ g
    return float(low.square().sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama-60m")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()
    rank = CompareConfig(methods=["galore"], model_name=a.model).method_hyperparameters("galore")["rank"]
    model = build_model(a.model, seed=0)
    model.config.use_cache = False
    x = torch.randint(0, model.config.vocab_size, (a.batch, a.seq), generator=torch.Generator().manual_seed(0))
    CausalLMLoss(model)(x).backward()
    grads = [w.grad.float() for w in split_params(model)[0]]
    for g in grads[:2]:  # LAPACK's and the QR's first calls pay their start-up
        projector(g, rank, "full"), projector(g, rank, "randomized")

    load_before = os.getloadavg()[0]
    times: dict[str, list[float]] = {"full": [0.0] * a.reps, "randomized": [0.0] * a.reps}
    kept_ratio, distance = [], []
    for i, g in enumerate(grads):
        bases = {}
        for rep in range(a.reps):
            for svd in (("full", "randomized") if (i + rep) % 2 == 0 else ("randomized", "full")):
                t0 = time.perf_counter()
                bases[svd] = projector(g, rank, svd)
                times[svd][rep] += time.perf_counter() - t0
        exact, rand = bases["full"], bases["randomized"]
        kept_ratio.append(kept(g, rand) / kept(g, exact))
        distance.append(((rand @ rand.t() - exact @ exact.t()).norm() / (2 * rank) ** 0.5).item())
    load_after = os.getloadavg()[0]
    full_s, rand_s = statistics.median(times["full"]), statistics.median(times["randomized"])
    shapes = sorted({tuple(g.shape) for g in grads})
    rows = [
        ["full SVD (`torch.linalg.svd`, the authors')", f"{full_s:.2f}", "1.000", "1.000", "0"],
        [f"randomized (`torch.svd_lowrank`, q = r + {RANDOMIZED_OVERSAMPLE}, {RANDOMIZED_NITER} iterations)",
         f"{rand_s:.2f}", f"{rand_s / full_s:.3f}",
         f"{statistics.median(kept_ratio):.4f} (min {min(kept_ratio):.4f})",
         f"{statistics.median(distance):.3f} (max {max(distance):.3f})"],
    ]
    body = (
        f"`{a.model}`, rank {rank}, {len(grads)} projected weights ({', '.join(f'{m}×{n}' for m, n in shapes)}); "
        f"gradients of one backward at random init (batch {a.batch} × seq {a.seq}); {a.reps} interleaved repetitions, "
        f"medians. Load average (1 min) {load_before:.2f} before, {load_after:.2f} after. Gradient kept = "
        "‖PᵀG‖² ÷ ‖P_fullᵀG‖² (median over the weights, and the worst); subspace distance = "
        "‖PPᵀ − P_full P_fullᵀ‖_F ÷ √(2r). `svd=\"randomized\"` is a GaLore option (`--method_args "
        "'{\"galore\": {\"svd\": \"randomized\"}}'`); the default stays the authors' full SVD.\n\n"
        + markdown_table(["projector", "s per refresh", "÷ full", "gradient kept", "subspace distance"], rows)
    )
    write_section("svd", "GaLore refresh: full vs randomized SVD", body)
    print(body)


if __name__ == "__main__":
    main()
