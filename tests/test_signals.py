"""Stopping a comparison (issue 17): SIGTERM, SIGINT and a Prefect cancellation stop the training, end the parent
and child runs KILLED with the tag memopt.stopped_by, keep the latest checkpoint, and end the process at once with
143 / 130; `--resume` then finishes the comparison.

One small comparison per way of stopping, the three at once, each `python -m flows.compare` a real process with its
own store and output folder:
- SIGTERM to its process group, as `timeout`, systemd or a container stop send it, with the temporary Prefect server
  the flow starts itself (the signal stops that server too): max_steps 100, resumed afterwards;
- SIGINT to its process group, as Ctrl-C sends it, on the session's Prefect server: max_steps 10⁹;
- a cancellation of its flow run through Prefect's API, as the UI's Cancel button sends it: epochs 10⁹.
The last two are runs of centuries: each says so on its first progress lines.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from memopt import checkpoint, preflight
from memopt.config import CompareConfig
from memopt.tracking import child_runs
from memopt.vocabulary import Tag
from tests.flowtools import seed_run
from tests.helpers import kill_group, start_flow, training_pids

ROOT = Path(__file__).resolve().parents[1]
STEPS = 100
MICRO = dict(model_name="llama-micro", batch_size=4, seq_len=32, eval_every=1000, checkpoint_every=5, regime="pretrain",
             sweep_steps=0)
ARGS = [arg for key, value in MICRO.items() for arg in (f"--{key}", str(value))] + ["--methods", "adamw", "--retries", "0"]
CASES = {  # how each comparison is stopped: its own step count, the exit code it must end with
    "SIGTERM": (["--max_steps", str(STEPS)], 128 + signal.SIGTERM),
    "SIGINT": (["--max_steps", "1000000000"], 128 + signal.SIGINT),
    "Prefect cancellation": (["--epochs", "1000000000"], 128 + signal.SIGTERM),
}
EXIT_WAIT_S = 60  # generous: the stop takes seconds; before, the process retried Prefect's API for 150 s


@pytest.fixture(scope="module")
def flow_env(prefect_server, tmp_path_factory) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PREFECT_API_URL": PREFECT_API_URL.value(),
            "PREFECT_LOCAL_STORAGE_PATH": str(tmp_path_factory.mktemp("prefect-storage")),
            # the temporary server's telemetry logs a traceback of its own now and then ("database is locked")
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def _stop(case: str, proc: subprocess.Popen, uri: str, parent: str) -> None:
    if case == "Prefect cancellation":
        from prefect import get_client
        from prefect.states import Cancelling

        flow_run_id = uuid.UUID(MlflowClient(uri).get_run(parent).data.tags[Tag.PREFECT_FLOW_RUN])
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run_id, Cancelling())  # what the UI's Cancel does
    else:
        os.killpg(proc.pid, signal.Signals[case])


@pytest.fixture(scope="module")
def stopped(flow_env, tmp_path_factory):
    root = tmp_path_factory.mktemp("signals")
    # The tokens once, in the first comparison's cache, copied to the others: what each would make the same way.
    first = root / "SIGTERM" / "results"
    data = Path(preflight.check_data(CompareConfig(output_dir=str(first), methods=["adamw"], max_steps=STEPS, **MICRO)))
    runs = {}
    for case, (args, _) in CASES.items():
        tmp = root / case.replace(" ", "-")
        out, uri, log = tmp / "results", f"sqlite:///{tmp}/mlflow.db", tmp / "flow.log"
        if case != "SIGTERM":
            shutil.copytree(data, out / "cache" / data.name)
        env = dict(flow_env)
        if case == "SIGTERM":  # the flow starts Prefect's temporary server, in its own process group
            del env["PREFECT_API_URL"]
            env["PREFECT_HOME"] = str(tmp / "prefect-home")
        proc = start_flow([*ARGS, *args, "--output_dir", str(out), "--tracking_uri", uri], tmp, env, log)
        runs[case] = SimpleNamespace(proc=proc, out=out, uri=uri, log=log, tmp=tmp)
    try:
        pending, deadline = set(CASES), time.monotonic() + 400
        while pending:
            for case in sorted(pending):
                r = runs[case]
                assert r.proc.poll() is None, f"{case}: the flow ended before it was stopped:\n{r.log.read_text()[-3000:]}"
                latest = next(r.out.glob("runs/*/adamw/seed-*/checkpoints/latest"), None)
                if latest is not None:
                    r.method_dir, r.parent = latest.parents[1], latest.parents[3].name
                    _stop(case, r.proc, r.uri, r.parent)
                    pending.discard(case)
            assert time.monotonic() < deadline, {c: runs[c].log.read_text()[-2000:] for c in pending}
            time.sleep(0.05)
        for case, r in runs.items():
            try:
                r.rc = r.proc.wait(timeout=EXIT_WAIT_S)
            except subprocess.TimeoutExpired:
                r.rc = None
            r.left = training_pids(str(r.method_dir))
    finally:
        for r in runs.values():
            kill_group(r.proc)
    for r in runs.values():
        r.client = MlflowClient(r.uri)
        r.stopped_at = int(checkpoint.latest(r.method_dir / "checkpoints").name.removeprefix("step-"))
    return runs


@pytest.mark.parametrize("case", CASES)
def test_a_stop_ends_the_process_at_once_with_the_conventional_code(stopped, case):
    r = stopped[case]
    log = r.log.read_text()
    assert r.rc is not None, f"still running {EXIT_WAIT_S} s after the stop:\n{log[-3000:]}"
    assert r.rc == CASES[case][1], log[-3000:]
    assert r.left == [], "no training process outlives the flow"
    assert f"stopped by {case}: training stopped, runs ended KILLED, checkpoints kept; finish it with: " \
           f"python -m flows.compare --resume {r.parent}" in log
    assert "Traceback" not in log and "Error logging to API" not in log, log[-3000:]


@pytest.mark.parametrize("case", CASES)
def test_a_stop_ends_the_parent_and_child_runs_killed_with_its_reason(stopped, case):
    r = stopped[case]
    parent = r.client.get_run(r.parent)
    [child] = child_runs(r.client, r.parent).values()
    for run in (parent, child, seed_run(r.client, r.parent, "adamw")):
        assert run.info.status == "KILLED", (run.info.run_name, run.info.status)
        assert run.data.tags[Tag.STOPPED_BY] == case
    # its latest checkpoint kept; the unbounded SIGINT and cancelled comparisons show the stop lands part-way
    # (the SIGTERM one's 100 steps can all be done before its stop lands on an idle machine)
    assert 0 < r.stopped_at <= (STEPS if case == "SIGTERM" else 10**9)


def test_a_cancelled_flow_run_ends_cancelled_in_prefect(stopped):
    from prefect import get_client

    r = stopped["Prefect cancellation"]
    flow_run_id = uuid.UUID(r.client.get_run(r.parent).data.tags[Tag.PREFECT_FLOW_RUN])
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(flow_run_id).state.is_cancelled()


@pytest.mark.parametrize("case", ["SIGINT", "Prefect cancellation"])
def test_a_run_longer_than_a_day_says_so_on_its_first_progress_lines(stopped, case):
    r = stopped[case]
    said = seed_run(r.client, r.parent, "adamw").data.tags[Tag.LONG_RUN]
    assert said.startswith(("1,000,000,000 steps at ", "1,104,000,000,000 steps at ")) and "more than a day" in said, said
    assert f"adamw: warning: {said}" in r.log.read_text()


def test_resume_finishes_a_comparison_stopped_by_a_signal(stopped, flow_env):
    r = stopped["SIGTERM"]
    before = seed_run(r.client, r.parent, "adamw")
    log = r.tmp / "resume.log"
    proc = subprocess.run([sys.executable, "-m", "flows.compare", "--resume", r.parent, "--tracking_uri", r.uri],
                          cwd=r.tmp, env=flow_env, stdout=log.open("w"), stderr=subprocess.STDOUT, timeout=400)
    assert proc.returncode == 0, log.read_text()[-3000:]
    [child] = child_runs(r.client, r.parent).values()
    after = seed_run(r.client, r.parent, "adamw")
    assert after.info.run_id == before.info.run_id and after.info.status == "FINISHED" == child.info.status
    assert int(after.data.tags[Tag.RESUMED_FROM_STEP]) == r.stopped_at
    steps = [m.step for m in r.client.get_metric_history(after.info.run_id, "train_loss")]
    assert sorted(steps) == list(range(1, STEPS + 1)), "every step once, across the stop"
    parent = r.client.get_run(r.parent)
    assert parent.info.status == "FINISHED"
    assert not any(Tag.STOPPED_BY in run.data.tags for run in (parent, child, after))
