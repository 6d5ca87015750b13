"""Optimizer state bytes on llama-60m: measured (memopt.memory) vs each method's formula, ratio to AdamW.

Run: python -m benchmarks.state_bytes [--steps N] [--model NAME]
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from benchmarks.common import markdown_table, write_section
from memopt.memory import expected_state_bytes, optimizer_state_bytes
from memopt.models import build_model
from memopt import optim
from memopt.optim import build

METHODS: list[tuple[str, dict]] = [
    ("adamw", {}),
    ("galore", {"rank": 128, "update_proj_gap": 200}),
    ("blockllm", {"sparsity": 0.9}),
    # the baselines (issue 13), at their registered defaults
    *((m, {}) for m in ("adamw-8bit", "adamw-ao8bit", "adamw-ao4bit", "muon", "adam-mini", "badam", "adalomo")),
    ("galore-8bit", {"rank": 128, "update_proj_gap": 200}),
]


def measure(model_name: str, name: str, hp: dict, steps: int, seq_len: int, batch: int) -> tuple[int, int]:
    model = build_model(model_name, seed=0)
    opt = build(name, model, **hp)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randint(0, vocab, (batch, seq_len), generator=gen)
        logits = model(x).logits
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), torch.roll(x, -1, 1).flatten())
        # as the engine steps: backward first (AdaLomo's own; BAdam reads the gradients before its closure runs)
        optim.backward(name, opt, loss)
        opt.step(lambda: loss.detach())
        opt.zero_grad(set_to_none=True)
    return optimizer_state_bytes(opt), expected_state_bytes(name, model, **hp)


def measure_authors(model_name: str, steps: int, seq_len: int, batch: int) -> int:
    """The authors' galore_torch.GaLoreAdamW on the same groups: what their projector object really pins."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from galore_torch import GaLoreAdamW as AuthorsGaLore
    from memopt.optim.galore import galore_param_groups

    model = build_model(model_name, seed=0)
    opt = AuthorsGaLore(galore_param_groups(model, rank=128, update_proj_gap=200), lr=0.01, no_deprecation_warning=True)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randint(0, model.config.vocab_size, (batch, seq_len), generator=gen)
        opt.zero_grad(set_to_none=True)
        logits = model(x).logits
        nn.functional.cross_entropy(logits.flatten(0, 1), torch.roll(x, -1, 1).flatten()).backward()
        opt.step()
    return optimizer_state_bytes(opt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="llama-60m")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = {name: measure(args.model, name, hp, args.steps, args.seq_len, args.batch) for name, hp in METHODS}
    base = results["adamw"][0]
    rows = []
    for name, hp in METHODS:
        measured, formula = results[name]
        settings = ", ".join(f"{k}={v}" for k, v in hp.items()) or "defaults"
        rows.append([name, settings, f"{measured:,}", f"{formula:,}", "yes" if measured == formula else "NO",
                     f"{measured / 2**20:.1f}", f"{measured / base:.3f}"])
        print(f"{name:9s} measured {measured:>12,} B  formula {formula:>12,} B  ratio to adamw {measured / base:.3f}")
    authors = measure_authors(args.model, args.steps, args.seq_len, args.batch)
    rows.append(["galore_torch (authors' code, reference)", "rank=128, update_proj_gap=200", f"{authors:,}", "—", "—",
                 f"{authors / 2**20:.1f}", f"{authors / base:.3f}"])
    print(f"authors' galore_torch measured {authors:,} B  ratio to adamw {authors / base:.3f}")
    body = (
        f"Model `{args.model}` (vocab 32000, fp32), {args.steps} steps on random tokens (batch {args.batch}, "
        f"seq {args.seq_len}). Measured = every tensor storage the optimizer holds between steps, each once "
        "(`memopt.memory.optimizer_state_bytes`); formula = the method's registered `state_bytes`. "
        "The authors' GaLore keeps its projector as a view of the SVD factor (fp32 weights), which pins the whole "
        "min(m,n)-sized factor; memopt's copies the rank-r slice.\n\n"
        + markdown_table(["method", "settings", "measured bytes", "formula bytes", "equal", "MiB", "÷ AdamW"], rows)
    )
    write_section("state_bytes", "Optimizer state bytes", body)


if __name__ == "__main__":
    main()
