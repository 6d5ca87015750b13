"""Final validation loss per method, each at its tuned lr, over seeds, in both regimes, through the real flow.

Run: python -m benchmarks.quality [--model llama-9m] [--steps 100] [--sweep_steps 25] [--seeds 0,1,2]

Two comparisons (`python -m flows.compare`), one per regime, side by side, every registered method in each: the same lr
grid swept for every method (the baseline included), the best trial's lr trained once per seed, each
into a throwaway sqlite store; then every method's run is read back from MLflow (memopt/tracking.py's
tree). The 1-minute load average is sampled every 2 s while each flow runs (the machine is shared) and
shown with the seed runs' mean over their own run windows. The orderings are set beside the papers'
60M tables (GaLore Table 2, APOLLO Table 2), which are pretraining results.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import PREFECT_HOME, markdown_table, write_section

# The papers' C4 validation perplexity, 60M (lower is better), by memopt method name.
PAPERS = {
    "GaLore Table 2 (60M)": {"adamw": 34.06, "galore": 34.88, "relora": 37.04, "low-rank": 78.18},  # LoRA 34.99: no method here
    "APOLLO Table 2 (60M)": {"fira": 31.06, "apollo": 31.55, "apollo-mini": 31.93},
}


def run_flows(runs: dict[str, list[str]], tmp: Path) -> dict[str, tuple[str, float, list[tuple[float, float]]]]:
    """Run the comparisons `runs` ({name: flow arguments}) side by side, or read back those a folder already
    holds (--reuse: the table again, with new code); {name: (store URI, wall time, sampled load averages)}."""
    env = {**os.environ, "PREFECT_HOME": PREFECT_HOME, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600",
           "PYTHONWARNINGS": "ignore"}
    procs, done = {}, {}
    for name, args in runs.items():
        folder, uri = tmp / name, f"sqlite:///{tmp / name / 'mlflow.db'}"
        if (folder / "loads.json").is_file():
            saved = json.loads((folder / "loads.json").read_text())
            done[name] = (uri, saved["wall"], [tuple(x) for x in saved["loads"]])
            continue
        folder.mkdir(parents=True)
        cmd = [sys.executable, "-m", "flows.compare", *args, "--output_dir", str(folder / "out"), "--tracking_uri", uri]
        procs[name] = (subprocess.Popen(cmd, env=env, stdout=(folder / "flow.log").open("w"), stderr=subprocess.STDOUT), uri)
    t0, loads = time.perf_counter(), []
    while any(proc.poll() is None for proc, _ in procs.values()):
        loads.append((time.time(), os.getloadavg()[0]))
        time.sleep(2)
    wall = time.perf_counter() - t0
    for name, (proc, uri) in procs.items():
        print(f"{name}: flow exit {proc.returncode} after {wall:.0f} s (log: {tmp / name / 'flow.log'})", file=sys.stderr)
        if proc.returncode == 2:  # bad input: nothing ran, so there is no table to write (a failed method exits 1)
            sys.exit(f"{name}: " + (tmp / name / "flow.log").read_text().strip().splitlines()[-1])
        (tmp / name / "loads.json").write_text(json.dumps({"wall": wall, "loads": loads}))
        done[name] = (uri, wall, loads)
    return done


def results(uri: str, loads: list[tuple[float, float]]) -> tuple[dict[str, dict], str]:
    """{method: its row's numbers} of the comparison in `uri`, and its regime."""
    from mlflow import MlflowClient

    from memopt.report.tuning import sweep_points
    from memopt.stats import spread
    from memopt.tracking import child_runs, seed_runs, seed_values
    from memopt.vocabulary import Metric, Param, Tag

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("memopt").experiment_id
    [parent] = client.search_runs([experiment], f"tags.`{Tag.PARENT}` IS NULL")
    children = child_runs(client, parent.info.run_id)
    points = sweep_points(client, children)
    rows = {}
    for method, run in children.items():
        seeds = [r for r in seed_runs(client, run.info.run_id) if r.info.status == "FINISHED"]
        values = seed_values(client, seeds)
        window = [load for t, load in loads for r in seeds if r.info.start_time / 1000 <= t <= (r.info.end_time or 1e13) / 1000]
        rows[method] = {
            "status": run.info.status, "reason": run.data.tags.get(Tag.FAILURE_REASON, ""),
            "lr": run.data.params.get(Param.CHOSEN_LR), "edge": run.data.tags.get(Tag.LR_ON_EDGE, ""),
            "trials": points.get(method, []),
            "loss": spread(values[Metric.FINAL_VAL_LOSS]) if values.get(Metric.FINAL_VAL_LOSS) else None,
            "initial": statistics.fmean(values[Metric.INITIAL_VAL_LOSS]) if values.get(Metric.INITIAL_VAL_LOSS) else None,
            "speed": statistics.fmean(values[Metric.TOKENS_PER_S]) if values.get(Metric.TOKENS_PER_S) else None,
            "peak": statistics.fmean(values[Metric.PEAK_RSS_MB]) if values.get(Metric.PEAK_RSS_MB) else None,
            "state": statistics.fmean(values[Metric.OPTIMIZER_STATE_BYTES]) if values.get(Metric.OPTIMIZER_STATE_BYTES) else None,
            "load": statistics.fmean(window) if window else None,
        }
    return rows, parent.data.tags.get(Tag.REGIME, "")


def regime_table(rows: dict[str, dict], regime: str) -> str:
    from memopt.regimes import why_not_learning
    from memopt.stats import verdict

    ref = rows.get("adamw", {}).get("loss")
    table = []
    for method, x in sorted(rows.items(), key=lambda kv: kv[1]["loss"].mean if kv[1]["loss"] else float("inf")):
        loss = x["loss"]
        ratio = loss.mean / x["initial"] if loss and x["initial"] else None
        trials = " · ".join(f"{lr:g}: {'—' if v is None else f'{v:.3f}'}" for lr, v in x["trials"])
        lr = f"{float(x['lr']):g}" + (f" ({x['edge']} end)" if x["edge"] else "") if x["lr"] else "—"
        table.append([
            method, x["status"] if x["status"] == "FINISHED" else f"{x['status']}: {x['reason'][:80]}", trials or "—", lr,
            f"**{loss.text('.3f')}**" if loss else "—", "—" if ratio is None else f"{ratio:.2f}",
            "—" if not (loss and ref) else "yardstick" if method == "adamw" else f"{loss.mean - ref.mean:+.3f} ({verdict(loss, ref)})",
            "—" if x["state"] is None else f"{x['state'] / 1e6:.2f}", "—" if x["speed"] is None else f"{x['speed']:,.0f}",
            "—" if x["peak"] is None else f"{x['peak']:.0f}", "—" if x["load"] is None else f"{x['load']:.1f}",
            why_not_learning(method, regime, ratio),
        ])
    return markdown_table(["method", "status", "trial val loss by lr", "chosen lr", "final val loss, mean ± std (min–max)",
                           "final ÷ initial", "− AdamW's (significance)", "state MB", "tokens/s", "peak RSS MiB",
                           "load avg", "note"], table)


def orderings(rows: dict[str, dict]) -> str:
    """Each paper's methods in its order and in ours (pretrain regime), with ties within the spread marked."""
    from memopt.stats import significant

    lines = []
    for paper, ppl in PAPERS.items():
        have = [m for m in ppl if rows.get(m, {}).get("loss")]
        if not have:
            continue
        ours = sorted(have, key=lambda m: rows[m]["loss"].mean)
        ties = [f"{a} ~ {b}" for a, b in zip(ours, ours[1:]) if significant(rows[a]["loss"], rows[b]["loss"]) is False]
        theirs = " < ".join(f"{m} {ppl[m]}" for m in sorted(ppl, key=ppl.get))
        here = " < ".join(f"{m} {rows[m]['loss'].mean:.3f}" for m in ours)
        lines.append(f"- {paper}: paper {theirs}; here {here}" + (f" (within the seeds' spread: {', '.join(ties)})" if ties else ""))
    return "\n".join(lines)


def main() -> None:
    from memopt import optim

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="llama-9m")
    p.add_argument("--steps", type=int, default=100, help="each seed run's budget (optimizer steps)")
    p.add_argument("--sweep_steps", type=int, default=25)
    p.add_argument("--lr_grid", default="1e-3,3e-3,1e-2")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--base_steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--regimes", default="pretrain,finetune", help="one comparison each, run side by side")
    p.add_argument("--sweep_workers", type=int, default=3)
    p.add_argument("--methods", default=",".join(optim.METHODS), help="comma-separated; adamw-amp is optional")
    p.add_argument("--section", default="quality", help="the BENCHMARKS.md section written (a subset's own)")
    p.add_argument("--reuse", default="", help="a folder an earlier run printed: its stores read back, nothing trained")
    a = p.parse_args()

    tmp = Path(a.reuse) if a.reuse else Path(tempfile.mkdtemp(prefix="memopt-quality-"))
    print(f"stores under {tmp}", file=sys.stderr)
    common = ["--methods", a.methods, "--model_name", a.model, "--max_steps", str(a.steps), "--batch_size", str(a.batch),
              "--sweep_steps", str(a.sweep_steps), "--lr_grid", a.lr_grid, "--seeds", a.seeds, "--base_steps",
              str(a.base_steps), "--eval_every", str(max(1, a.steps // 4)), "--checkpoint_every", str(a.steps),
              "--sweep_workers", str(a.sweep_workers)]
    regimes = a.regimes.split(",")
    flows = run_flows({regime: [*common, "--regime", regime] for regime in regimes}, tmp)
    sections, walls, by_regime = [], [], {}
    for regime in regimes:
        uri, wall, loads = flows[regime]
        rows, _ = results(uri, loads)
        by_regime[regime] = rows
        walls.append(f"{regime} {wall / 60:.0f} min (load {min(l for _, l in loads):.1f}–{max(l for _, l in loads):.1f})")
        sections.append(f"### Regime `{regime}`\n\n{regime_table(rows, regime)}")
    body = (
        f"`{a.model}`, batch {a.batch} × seq 128 (the default), on the embedded default dataset; every method swept over lr "
        f"{a.lr_grid} ({a.sweep_steps}-step trials, the best by validation loss at the trial's last step), then "
        f"{a.steps} steps per seed at the chosen lr, seeds {a.seeds}; rank = hidden/4. Regime `pretrain`: random init. "
        f"Regime `finetune`: a base model pretrained for {a.base_steps} AdamW steps on the embedded general-text "
        f"corpus, fine-tuned by each method. Final val loss: the evaluate task's `final_val_loss` on the whole "
        f"validation split, mean ± sample std (min–max) over the seeds; initial: `val_loss` at step 0; "
        f"significance: the gap to AdamW's mean against the sum of the two standard deviations (memopt/stats.py). "
        f"Tokens/s: each seed run's whole-run throughput of its training steps, mean over seeds; state: "
        f"`optimizer_state_bytes`. Wall: {'; '.join(walls)}: the regimes' comparisons ran side by side, so the "
        f"tokens/s compare only within a regime and where the loads are alike. Load avg: the mean 1-min load over "
        f"the method's seed runs (seed runs train one at a time; trials {a.sweep_workers} at a time).\n\n"
        + "\n\n".join(sections)
        + "\n\n### Orderings beside the papers (pretrain regime)\n\n"
        + (orderings(by_regime["pretrain"]) if "pretrain" in by_regime else "(pretrain regime not run)")
        + "\n"
    )
    write_section(a.section, "Validation loss per method at its tuned lr, over seeds, in both regimes (real flow)"
                  + (f" ({a.section})" if a.section != "quality" else ""), body)
    print(body)


if __name__ == "__main__":
    main()
