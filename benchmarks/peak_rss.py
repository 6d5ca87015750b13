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
steps do not have. Methods run one after another (round-robin over `--reps`): memory does not
depend on the load, but the load is recorded anyway.
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
    opt = optim.build(recipe(method).optimizer, model, **hp, **run_hyperparameters(recipe(method).optimizer, steps, 1))
    loss_of = (lambda x: model(input_ids=x, labels=x).loss) if transformers_loss else CausalLMLoss(model)
    gen = torch.Generator().manual_seed(0)
    hwm_step1 = hwm_later = 0
    reset_ok = True
    for step in range(steps):
        x = torch.randint(0, model.config.vocab_size, (batch, seq), generator=gen)
        loss = loss_of(x)
        optim.backward(recipe(method).optimizer, opt, loss)  # loss.backward(), or AdaLomo's own
        opt.step(lambda: loss.detach())
        opt.zero_grad(set_to_none=True)
        if step == 0:
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


def main() -> None:
    from memopt import optim

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="llama-60m")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--methods", default=",".join(optim.METHODS))
    p.add_argument("--fixed_mmap", default="adamw,blockllm",
                   help="methods also run with MALLOC_MMAP_THRESHOLD_=65536 (glibc's dynamic threshold off)")
    p.add_argument("--hf_loss", default="adamw,blockllm",
                   help="methods also run with transformers' loss (full logits) instead of the engine's fused one")
    p.add_argument("--transformers_loss", action="store_true", help=argparse.SUPPRESS)  # child only
    p.add_argument("--child", default=None)
    p.add_argument("--section", default="peak_rss", help="the BENCHMARKS.md section written (a subset's own)")
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.model, a.batch, a.seq, a.steps, a.transformers_loss)))
        return

    methods = [m for m in a.methods.split(",") if m]
    if "adamw" not in methods:
        methods.insert(0, "adamw")
    methods += [m + FIXED for m in a.fixed_mmap.split(",") if m] + [m + HF_LOSS for m in a.hf_loss.split(",") if m]
    runs: dict[str, list[dict]] = {m: [] for m in methods}
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
        "gradients). Each variant row is compared with AdamW run the same way.\n\n"
        + markdown_table(header, rows)
    )
    write_section(a.section, "Peak RSS per method (own process each)" + (f" ({a.section})" if a.section != "peak_rss" else ""), body)
    print(body)


if __name__ == "__main__":
    main()
