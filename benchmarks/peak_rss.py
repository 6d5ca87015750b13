"""Peak RSS per method, each method in a fresh process of its own, ÷ AdamW.

Run: python -m benchmarks.peak_rss [--model llama-60m] [--batch 4] [--seq 256] [--steps 4] [--methods a,b]

Each child (`--child METHOD`) imports everything, reads its RSS right before the model is built
(the baseline), builds the paper's model (vocab 32000, random init, seed 0) and the method's
optimizer with the pipeline's own hyperparameters (CompareConfig.method_hyperparameters: rank =
hidden/4), then trains `--steps` steps on seeded random tokens the way the engine does
(forward, backward, `optimizer.step(closure)`, `zero_grad(set_to_none=True)`). It reports the
kernel's high-water mark (VmHWM) after step 1 and, after resetting it through
/proc/self/clear_refs, the high-water mark of steps 2..N alone: BlockLLM's first step is one full
backward with every non-embedding tensor trainable (its first selection), a transient the later
steps do not have. Step 2 is also measured by the engine's own probe (memopt/breakdown.py): the
exact bytes of the weights, gradients, optimizer state and peak activations, each beside its
formula, the baseline (runtime) and the rest of the step's peak.
Methods run one after another (round-robin over `--reps`): memory does not depend on the load,
but the load is recorded anyway.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from benchmarks.common import markdown_table, write_section

MIB = 1024 * 1024


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux: reset the peak RSS to the current RSS
        return True
    except OSError:
        return False


def child(method: str, model_name: str, batch: int, seq: int, steps: int, transformers_loss: bool) -> dict:
    import torch

    from memopt import optim
    from memopt.breakdown import StepMemory
    from memopt.config import CompareConfig
    from memopt.loss import CausalLMLoss
    from memopt.memory import optimizer_state_bytes
    from memopt.methods import recipe, run_hyperparameters
    from memopt.models import build_model
    from memopt.monitor import rss_bytes

    torch.set_num_threads(torch.get_num_threads())
    hp = CompareConfig(methods=[method], model_name=model_name).method_hyperparameters(method)
    baseline = rss_bytes()
    model = build_model(model_name, seed=0)
    model.config.use_cache = False
    params_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    name = recipe(method).optimizer
    all_hp = {**hp, **run_hyperparameters(name, steps, 1)}
    opt = optim.build(name, model, **all_hp)
    loss_of = (lambda x: model(input_ids=x, labels=x).loss) if transformers_loss else CausalLMLoss(model)
    # the activation formula counts the engine's fused loss
    probe = StepMemory(model, opt, torch.device("cpu"), baseline, lambda: optim.expected_state_bytes(name, model, **all_hp),
                       None if transformers_loss else (batch, seq))
    probe.at_step = min(2, steps)
    gen = torch.Generator().manual_seed(0)
    hwm_step1 = hwm_later = 0
    reset_ok = True
    breakdown = None
    for step in range(1, steps + 1):
        x = torch.randint(0, model.config.vocab_size, (batch, seq), generator=gen)
        with probe.measuring(step):  # the engine's boundaries (memopt/trainer.py)
            loss = loss_of(x)
            probe.boundary("forward")
            loss.backward()
            probe.boundary("backward")
            opt.step(lambda: loss.detach())
            probe.boundary("optimizer_step")
        opt.zero_grad(set_to_none=True)
        breakdown = probe.take() or breakdown
        if step == 1:
            hwm_step1 = _hwm_bytes()
            reset_ok = _reset_hwm()
    hwm_later = _hwm_bytes() if steps > 1 else hwm_step1
    return {
        "method": method,
        "hp": hp,
        "baseline": baseline,
        "params": params_bytes,
        "trainable_params_end": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "state": optimizer_state_bytes(opt),
        "peak": max(hwm_step1, hwm_later),
        "peak_step1": hwm_step1,
        "peak_later": hwm_later if reset_ok else None,
        "rss_end": rss_bytes(),
        "breakdown": {"measured": breakdown.measured, "estimate": breakdown.estimate, "runtime": breakdown.runtime,
                      "rest": breakdown.rest, "peak": breakdown.peak, "step": breakdown.step},
    }


FIXED = " (fixed mmap threshold)"
HF_LOSS = " (transformers' loss)"


def variant(label: str) -> tuple[str, str]:
    """(method, variant suffix) of a row label."""
    for suffix in (FIXED, HF_LOSS):
        if label.endswith(suffix):
            return label.removesuffix(suffix), suffix
    return label, ""


def run_child(label: str, a: argparse.Namespace) -> dict:
    method, suffix = variant(label)
    cmd = [sys.executable, "-m", "benchmarks.peak_rss", "--child", method, "--model", a.model,
           "--batch", str(a.batch), "--seq", str(a.seq), "--steps", str(a.steps)]
    cmd += ["--transformers_loss"] if suffix == HF_LOSS else []
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)} if suffix == FIXED else None
    load = os.getloadavg()[0]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return {**json.loads(out.strip().splitlines()[-1]), "load": load}


def breakdown_section(methods: list[str], runs: dict[str, list[dict]]) -> str:
    """Where step 2's memory goes, per method: the engine's probe (memopt/breakdown.py), medians over the runs."""
    from memopt.vocabulary import MemoryPart

    def med(m: str, key: str, part: str | None = None) -> float:
        values = [r["breakdown"][key] if part is None else r["breakdown"][key][part] for r in runs[m]]
        return statistics.median(values) if None not in values else None

    def mib(measured: float, formula: float | None = None) -> str:
        text = f"{measured / MIB:.1f}"
        return text if formula is None else f"{text} ({formula / MIB:.1f})"

    rows = []
    for m in methods:
        ref_peak = med("adamw" + variant(m)[1], "peak")
        rows.append([m, *(mib(med(m, "measured", p), med(m, "estimate", p)) for p in MemoryPart),
                     mib(med(m, "runtime")), mib(med(m, "rest")), mib(med(m, "peak")), f"{med(m, 'peak') / ref_peak:.3f}"])
    header = ["method", "weights MiB", "gradients MiB", "optimizer state MiB", "peak activations MiB", "runtime MiB",
              "rest MiB", "step 2 peak MiB", "step 2 peak ÷ AdamW"]
    return (
        "### Where step 2's memory goes\n\n"
        "The same runs, step 2 measured by the engine's probe (`memopt.breakdown.StepMemory`, what the training "
        "process logs as `memory/*`): exact bytes of the weights, of the gradients when backward ends, of the "
        "optimizer state after the step, and the most bytes autograd's saved tensors held at once (peak "
        "activations, the fused loss's gradients included); in brackets each part's formula from the shapes (the "
        "activation count of memopt.breakdown.activation_bytes; none with frozen or reparameterized tensors or "
        "transformers' loss). Runtime = the baseline, RSS right before the model is built (Python, torch, "
        "transformers); rest = the step's own VmHWM (reset at its start) minus the runtime and the four parts "
        "(temporaries, code loaded since, freed memory glibc keeps resident; gradients and activations do not all "
        "coexist, so it is a lower bound). Medians over the runs.\n\n" + markdown_table(header, rows)
    )


def main() -> None:
    from memopt import optim

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="llama-60m")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--section", default="peak_rss",
                   help="the BENCHMARKS.md section to write: a run over a subset of the methods can go beside the full table")
    p.add_argument("--methods", default=",".join(optim.METHODS))
    p.add_argument("--fixed_mmap", default="adamw,blockllm",
                   help="methods also run with MALLOC_MMAP_THRESHOLD_=65536 (glibc's dynamic threshold off)")
    p.add_argument("--hf_loss", default="adamw,blockllm",
                   help="methods also run with transformers' loss (full logits) instead of the engine's fused one")
    p.add_argument("--transformers_loss", action="store_true", help=argparse.SUPPRESS)  # child only
    p.add_argument("--child", default=None)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.model, a.batch, a.seq, a.steps, a.transformers_loss)))
        return

    methods = [m for m in a.methods.split(",") if m]
    if "adamw" not in methods:
        methods.insert(0, "adamw")
    methods += [m + FIXED for m in a.fixed_mmap.split(",") if m] + [m + HF_LOSS for m in a.hf_loss.split(",") if m]
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    load_before = os.getloadavg()[0]
    for rep in range(a.reps):  # round-robin
        for m in methods:
            r = run_child(m, a)
            runs[m].append(r)
            print(f"rep {rep} {m}: peak {r['peak'] / MIB:.0f} MiB, baseline {r['baseline'] / MIB:.0f} MiB, "
                  f"step1 {r['peak_step1'] / MIB:.0f}, later {(r['peak_later'] or 0) / MIB:.0f}, load {r['load']:.2f}",
                  file=sys.stderr, flush=True)

    def med(m: str, key: str) -> float:
        vals = [r[key] for r in runs[m] if r[key] is not None]
        return statistics.median(vals) if vals else float("nan")

    rows = []
    for m in methods:
        ref = "adamw" + variant(m)[1]
        ref_peak, ref_train = med(ref, "peak"), med(ref, "peak") - med(ref, "baseline")
        ref_later = med(ref, "peak_later") - med(ref, "baseline")
        peak, base, later = med(m, "peak"), med(m, "baseline"), med(m, "peak_later")
        rows.append([
            m, ", ".join(f"{k}={v}" for k, v in runs[m][0]["hp"].items()) or "defaults",
            f"{base / MIB:.0f}", f"{peak / MIB:.0f}", f"**{peak / ref_peak:.3f}**",
            f"{(peak - base) / MIB:.0f}", f"{(peak - base) / ref_train:.3f}",
            f"{(med(m, 'peak_step1') - base) / MIB:.0f}", f"{(later - base) / MIB:.0f}", f"{(later - base) / ref_later:.3f}",
            f"{med(m, 'state') / MIB:.1f}", f"{runs[m][0]['trainable_params_end'] / 1e6:.2f}",
            " / ".join(f"{r['load']:.2f}" for r in runs[m]),
        ])
    header = ["method", "settings", "baseline MiB", "peak MiB", "peak ÷ AdamW", "training share MiB", "share ÷ AdamW",
              "share, step 1 MiB", "share, steps 2..N MiB", "steps 2..N ÷ AdamW", "optimizer state MiB",
              "trainable M params (end)", "load avg (1 min)"]
    params_mib = runs["adamw"][0]["params"] / MIB
    body = (
        f"Model `{a.model}` (vocab 32000, fp32, {params_mib:.0f} MiB of parameters), batch {a.batch} × seq {a.seq}, "
        f"{a.steps} steps on seeded random tokens, each method in a fresh process ({a.reps} run(s) each, round-robin; "
        "medians). Peak = the process's VmHWM; baseline = RSS right before the model is built (Python, torch, "
        "transformers imported); training share = peak − baseline. Step 1 vs steps 2..N: VmHWM after the first "
        "step, then reset (`/proc/self/clear_refs`) and read again after the last step. Rows marked fixed mmap "
        "threshold ran with `MALLOC_MMAP_THRESHOLD_=65536`, which turns off glibc's dynamic mmap threshold "
        "(after a large tensor is freed, glibc raises the threshold up to 32 MiB, so later tensors below it come "
        "from the heap and freed ones are kept resident). Every row computes the loss as the engine does "
        "(`memopt.loss.CausalLMLoss`: fused, chunked linear cross-entropy) except those marked transformers' loss, "
        "which call `model(input_ids, labels).loss` (the whole batch's fp32 logits, and their log-softmax and "
        "gradients). Each variant row is compared with AdamW run the same way. 1-minute load average before the "
        f"first run → after the last: {load_before:.2f} → {os.getloadavg()[0]:.2f}.\n\n"
        + markdown_table(header, rows)
        + "\n\n" + breakdown_section(methods, runs)
    )
    title = "Peak RSS per method (own process each)"
    write_section(a.section, title if a.section == "peak_rss" else f"{title}: {', '.join(methods)}", body)
    print(body)


if __name__ == "__main__":
    main()
