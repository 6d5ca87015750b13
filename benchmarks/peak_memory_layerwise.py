"""Peak RSS of a llama-20m training step (forward + backward + step, batch 4 x seq 256):
adamw vs galore vs galore-layerwise, each method in its own fresh subprocess so no
allocation of one run can hide in another's peak.

Each child builds the model, records its RSS, runs `--steps` steps (the first allocates
the optimizer state, later ones are steady), then reports the process peak RSS
(ru_maxrss) and the training peak = peak minus the RSS before the first step. Ratios are
to AdamW. All methods run the same loop: loss.backward(); optimizer.step(closure);
zero_grad(set_to_none=True); in layer-wise mode the update happens inside backward and
step() only runs the closure.

Run: python -m benchmarks.peak_memory_layerwise [--steps N] [--repeats R]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

METHODS = [("adamw", {}), ("galore", {"rank": 128, "update_proj_gap": 200}),
           ("galore-layerwise", {"rank": 128, "update_proj_gap": 200})]
MODEL, BATCH, SEQ = "llama-20m", 4, 256
MIB = 2**20


def child(name: str, steps: int) -> dict:
    import torch
    from torch import nn

    from memopt.models import build_model
    from memopt.monitor import peak_rss_bytes, rss_bytes
    from memopt.optim import build

    torch.set_num_threads(1)  # memory, not speed, is measured; one thread keeps the shared machine usable
    hp = dict(METHODS)[name]
    model = build_model(MODEL, seed=0)
    opt = build(name, model, **hp)
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    before = rss_bytes()
    for _ in range(steps):
        x = torch.randint(0, vocab, (BATCH, SEQ), generator=gen)
        logits = model(x).logits
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), torch.roll(x, -1, 1).flatten())
        del logits
        loss.backward()
        opt.step(lambda: loss)
        opt.zero_grad(set_to_none=True)
        del loss
    peak = peak_rss_bytes()
    return {"before": before, "peak": peak, "params": sum(p.numel() for p in model.parameters())}


def run_child(name: str, steps: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.peak_memory_layerwise", "--child", name, "--steps", str(steps)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="runs per method; the smallest peak is kept")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps)))
        return

    from benchmarks.common import markdown_table, write_section

    results = {}
    for _ in range(args.repeats):  # interleaved, so load from other processes falls on all alike
        for name, _hp in METHODS:
            r = run_child(name, args.steps)
            best = results.get(name)
            if best is None or r["peak"] < best["peak"]:
                results[name] = r
    base = results["adamw"]
    base_train = base["peak"] - base["before"]
    rows = []
    for name, hp in METHODS:
        r = results[name]
        train = r["peak"] - r["before"]
        rows.append([f"`{name}`", ", ".join(f"{k} {v}" for k, v in hp.items()) or "—",
                     f"{r['peak'] / MIB:.0f}", f"{r['peak'] / base['peak']:.3f}",
                     f"{train / MIB:.0f}", f"{train / base_train:.3f}"])
    body = (
        f"{MODEL} ({base['params'] / 1e6:.1f}M parameters, fp32), batch {BATCH} x seq {SEQ}, {args.steps} steps, "
        f"each method in a fresh subprocess, smallest of {args.repeats} runs. Training peak = process peak RSS "
        "minus the RSS after the model was built (what the step itself adds: activations, gradients, state).\n\n"
        + markdown_table(["method", "hyperparameters", "peak RSS MiB", "÷ adamw", "training peak MiB", "÷ adamw"], rows)
    )
    print(body)
    write_section("peak_memory_layerwise", f"Peak memory: layer-wise GaLore ({MODEL})", body)


if __name__ == "__main__":
    main()
