"""The ways in that the UIs offer, end to end: a schedule that fires, and one MLflow experiment for all.

One module fixture, real components: a `prefect server start` on loopback in a home of its own;
`python -m flows.serve --interval_s` serving the flow there, so that the server's scheduler creates the
runs and the served process runs the first (the schedule is then paused, as a user would in the UI, so that
no second run starts); and, at the same time, `make run` (its `mlflow run`) against the same server and the
same MLflow store. The comparisons are tiny: the schedule and the bookkeeping are tested.
"""
from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from memopt.tracking import child_runs
from memopt.vocabulary import Tag
from tests.test_scaleout import free_port

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parents[1]
# Pretrain without a sweep: one training per comparison (no base model, no trials), as short as a run gets.
TINY = {"model_name": "llama-micro", "seq_len": "32", "batch_size": "4", "max_steps": "2", "eval_every": "2",
        "checkpoint_every": "2", "retries": "0", "regime": "pretrain", "sweep_steps": "0"}
# Lines that would be a new warning, an error or a progress bar in a comparison's output.
NOISE = re.compile(r"warn|traceback|error|exception|it/s\]", re.IGNORECASE)


def wait_for(condition, what: str, procs: list[subprocess.Popen], logs: list[Path], timeout: float = 400):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        ended = [p for p in procs if p.poll() is not None]
        if ended or time.monotonic() > deadline:
            tails = "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs)
            raise AssertionError(f"no {what} ({'a process ended' if ended else 'timed out'}):\n{tails}")
        time.sleep(0.5)
    return value


def stop(proc: subprocess.Popen, sig: int = signal.SIGINT) -> None:
    """Stop a process started in a session of its own, as Ctrl-C would; kill what is left."""
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def experiment_exists(db: Path, name: str) -> bool:
    if not db.exists():
        return False
    try:
        with sqlite3.connect(db) as con:
            return bool(con.execute("SELECT 1 FROM experiments WHERE name = ?", (name,)).fetchall())
    except sqlite3.Error:  # not created yet
        return False


def prefect_client(api: str, call):
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        return call(client)


def deployment_runs(api: str):
    """Every flow run of a deployment on the server, the earliest first."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
    from prefect.client.schemas.sorting import FlowRunSort

    runs_filter = FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(is_null_=False))
    return prefect_client(api, lambda client: client.read_flow_runs(flow_run_filter=runs_filter,
                                                                     sort=FlowRunSort.EXPECTED_START_TIME_ASC))


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("schedule")
    db, port = tmp / "mlflow.db", free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))},
           "PREFECT_HOME": str(tmp / "prefect-home"), "PREFECT_API_URL": api, "PYTHONPATH": str(ROOT),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_UI_ENABLED": "false",
           "PREFECT_RUNNER_POLL_FREQUENCY": "2", "MLFLOW_TRACKING_URI": f"sqlite:///{db}", "OMP_NUM_THREADS": "1"}
    logs = {name: tmp / f"{name}.log" for name in ("server", "make-run", "serve")}

    def start(name: str, cmd: list[str], cwd: Path = tmp) -> subprocess.Popen:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=logs[name].open("w"), stderr=subprocess.STDOUT,
                                start_new_session=True)

    server = start("server", [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)])
    procs = [server]
    try:
        wait_for(lambda: _answers(f"{api}/health"), "Prefect server", procs, [logs["server"]], timeout=180)
        # `make run` exactly as a user types it (its venv installed already), writing into the temporary folder
        args = " ".join(f"-P {k}={v}" for k, v in {**TINY, "output_dir": tmp / "make-run"}.items())
        make_run = start("make-run", ["make", "-C", str(ROOT), "run", f"VENV={VENV}", "-o", f"{VENV}/.installed",
                                      "METHODS=adamw", f"ARGS={args}"])
        procs.append(make_run)
        # mlflow run creates the experiment before its command runs; the served flow finds it made
        wait_for(lambda: experiment_exists(db, "memopt"), "memopt experiment", procs, list(logs.values()))
        serve = start("serve", [sys.executable, "-m", "flows.serve", "--interval_s", "20", "--name", "test-schedule",
                                "--methods", "adamw", "--output_dir", str(tmp / "served"),
                                *(f"--{k}={v}" for k, v in TINY.items())])
        procs.append(serve)
        serving = [server, serve]
        runs = wait_for(lambda: [rs for rs in [deployment_runs(api)] if len(rs) >= 2], "runs the scheduler made",
                        serving, list(logs.values()))[0]
        started = wait_for(lambda: next((r for r in deployment_runs(api) if not r.state.is_scheduled()), None),
                           "scheduled run that started", serving, list(logs.values()))
        # the next run is an interval (20 s) away, beyond what the runner fetches ahead (10 s): none starts
        prefect_client(api, lambda client: client.pause_deployment(started.deployment_id))
        first = wait_for(lambda: next((r for r in deployment_runs(api) if r.id == started.id and r.state.is_final()), None),
                         "end of the scheduled run", serving, list(logs.values()))
        make_rc = make_run.wait(timeout=400)
    finally:
        for proc in reversed(procs):
            stop(proc)
    return SimpleNamespace(tmp=tmp, client=MlflowClient(f"sqlite:///{db}"), first=first, runs=runs, make_rc=make_rc,
                           logs=logs)


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).read()
        return True
    except OSError:
        return False


def test_the_server_schedules_runs_and_the_first_completes(scheduled):
    runs, first = scheduled.runs, scheduled.first
    assert all(r.state.is_scheduled() and "auto-scheduled" in r.tags for r in runs), "made by the server's scheduler"
    assert [round((b.expected_start_time - a.expected_start_time).total_seconds()) for a, b in zip(runs, runs[1:])] \
        == [20] * (len(runs) - 1)
    assert first.id == runs[0].id and first.state.is_completed(), f"{first.state}\n{scheduled.logs['serve'].read_text()[-3000:]}"
    assert {"method:adamw", "model:llama-micro", "auto-scheduled"} <= set(first.tags)


def test_make_run_and_the_deployment_log_to_one_experiment(scheduled):
    client = scheduled.client
    assert scheduled.make_rc == 0, scheduled.logs["make-run"].read_text()[-3000:]
    experiment = client.get_experiment_by_name("memopt").experiment_id
    parents = client.search_runs([experiment], f"tags.`{Tag.PARENT}` IS NULL", run_view_type=ViewType.ALL)
    by_source = {p.data.tags["mlflow.source.type"]: p for p in parents}
    assert sorted(by_source) == ["LOCAL", "PROJECT"] and len(parents) == 2, [p.data.tags for p in parents]
    served, made = by_source["LOCAL"], by_source["PROJECT"]
    assert served.data.tags[Tag.PREFECT_FLOW_RUN] == str(scheduled.first.id)
    for parent in (served, made):
        assert parent.info.status == "FINISHED" and parent.info.run_name == "adamw on llama-micro"
        assert child_runs(client, parent.info.run_id)["adamw"].info.status == "FINISHED"
        assert "adamw.final_val_loss" in parent.data.metrics
        assert not [k for k, v in parent.data.params.items() if v in ("", "None")], parent.data.params
    # `mlflow run` made its run in the experiment it was given; that run is the comparison's parent
    assert "mlflow.project.entryPoint" in made.data.tags and made.data.tags["mlflow.source.git.commit"]
    assert client.search_runs(["0"], run_view_type=ViewType.ALL) == [], "nothing in Default"


@pytest.mark.parametrize("name", ["make-run", "serve"])
def test_no_warning_error_or_progress_bar_in_the_output(scheduled, name):
    lines = scheduled.logs[name].read_text().splitlines()
    assert any("adamw: step 2/2 (100%)" in line for line in lines), lines[-40:]
    noisy = [line for line in lines if NOISE.search(line)]
    assert not noisy, "\n".join(noisy)
