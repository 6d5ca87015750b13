"""Nothing lost: a comparison killed part-way resumes; failures stay with their method; two comparisons
share one store and one folder; the same seed gives the same numbers; no secret reaches MLflow.

Real components throughout: `python -m flows.compare` and `mlflow run` as subprocesses against a sqlite
store in a temporary folder, talking to the session's one Prefect test server (no ephemeral server per
subprocess), and their training processes killed with SIGKILL from here.

Two module fixtures carry most tests, to keep the time down:
- `resumed`: adamw,blockllm; the flow process is killed once adamw is FINISHED and blockllm has a
  checkpoint, then `--resume PARENT` finishes it.
- `two_at_once`: two comparisons started together on one store and one output folder. A trains
  blockllm (finishes), adamw (its checkpoint folder turned into a file: every save fails) and galore (its training
  process killed by this test, on the first attempt and on the retry); B trains blockllm alone.
"""
from __future__ import annotations

import os
import pickle
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import mlflow.artifacts
import pytest
import torch
from mlflow import MlflowClient
from mlflow.entities import ViewType
from safetensors.torch import load_file

from tests.flowtools import (BIN, ROOT, children_by_method, cli_environment, history, kill_group, resumable_step,
                             report_rows, seed_run, start_flow, training_pids, wait_for)
from memopt import checkpoint
from memopt.report import TABLE
from memopt.tracking import child_runs, run_model_id
from memopt.vocabulary import Tag

STEPS = 12
# The same training in every comparison here, so that their histories can be compared step by step.
MICRO = ["--model_name", "llama-micro", "--batch_size", "4", "--seq_len", "32", "--max_steps", str(STEPS),
         "--eval_every", "3", "--checkpoint_every", "2", "--regime", "pretrain", "--sweep_steps", "0"]
SECRETS = {"AWS_SECRET_ACCESS_KEY": "sekrit-aws-4f1c9e", "MLFLOW_TRACKING_PASSWORD": "sekrit-mlflow-9b2e7d"}


@pytest.fixture(scope="module")
def cli_env(prefect_server, tmp_path_factory) -> dict[str, str]:
    # SECRETS in every run's environment: test_no_secret_reaches_mlflow looks for them
    return cli_environment(tmp_path_factory, **SECRETS)


# ---- a comparison killed part-way, then resumed ------------------------------------------------------

@pytest.fixture(scope="module")
def resumed(cli_env, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    uri, out = f"sqlite:///{tmp}/mlflow.db", tmp / "results"
    first_log = tmp / "first.log"
    proc = start_flow([*MICRO, "--methods", "adamw,blockllm", "--retries", "0", "--output_dir", str(out),
                       "--tracking_uri", uri], tmp, cli_env, first_log)
    try:
        latest = wait_for(lambda: next(out.glob("runs/*/blockllm/seed-0/checkpoints/latest"), None), proc, first_log,
                          "blockllm checkpoint")
        method_dir = latest.parents[1]  # the seed run's folder: runs/PARENT/blockllm/seed-0
        train_pids = training_pids(str(method_dir))
        os.kill(proc.pid, signal.SIGKILL)  # the flow process alone: its training process must not outlive it
        proc.wait()
        deadline = time.monotonic() + 20
        while training_pids(str(method_dir)) and time.monotonic() < deadline:
            time.sleep(0.1)
        orphans = training_pids(str(method_dir))
    finally:
        kill_group(proc)  # whatever survived, so that it cannot write into the resume below
    parent = method_dir.parents[1].name
    client = MlflowClient(uri)
    before = {m: r for m, r in child_runs(client, parent).items()}
    killed_at = resumable_step(method_dir / "checkpoints")

    second_log = tmp / "second.log"
    t0 = time.monotonic()
    rc = subprocess.run([sys.executable, "-m", "flows.compare", "--resume", parent, "--tracking_uri", uri],
                        cwd=tmp, env=cli_env, stdout=second_log.open("w"), stderr=subprocess.STDOUT, timeout=400).returncode
    return SimpleNamespace(tmp=tmp, uri=uri, out=out, client=client, parent=parent, before=before, rc=rc,
                           log=second_log, train_pids=train_pids, orphans=orphans, killed_at=killed_at,
                           resume_s=time.monotonic() - t0)


def test_killing_the_flow_kills_its_training_process(resumed):
    assert len(resumed.train_pids) == 1, "blockllm's training process was running when the flow was killed"
    assert resumed.orphans == [], "the training process outlived the flow process"
    assert resumed.before["adamw"].info.status == "FINISHED"
    assert resumed.before["blockllm"].info.status == "RUNNING"
    assert resumed.killed_at < STEPS, "blockllm was killed part-way"


def test_resume_skips_the_finished_method_and_finishes_the_other_in_its_own_run(resumed):
    client, parent = resumed.client, resumed.parent
    assert resumed.rc == 0, resumed.log.read_text()[-3000:]
    runs = children_by_method(client, parent)
    assert sorted(runs) == ["adamw", "blockllm"]
    assert [len(r) for r in runs.values()] == [1, 1], "one child run per method, a resume included"
    adamw, blockllm = runs["adamw"][0], runs["blockllm"][0]
    assert adamw.info.run_id == resumed.before["adamw"].info.run_id
    assert adamw.info.end_time == resumed.before["adamw"].info.end_time, "the finished method was left alone"
    assert blockllm.info.run_id == resumed.before["blockllm"].info.run_id
    assert blockllm.info.status == "FINISHED"
    trained = seed_run(client, parent, "blockllm")
    assert int(trained.data.tags["memopt.resumed_from_step"]) == resumed.killed_at
    for key in ("train_loss", "grad_norm", "lr"):
        assert sorted(history(client, trained.info.run_id, key)) == list(range(1, STEPS + 1)), key
    assert sorted(history(client, trained.info.run_id, "val_loss")) == [0, 3, 6, 9, 12]
    assert {"final_val_loss", "final_val_perplexity"} <= set(blockllm.data.metrics) & set(trained.data.metrics)
    assert client.get_run(parent).info.status == "FINISHED"
    rows = report_rows((resumed.out / TABLE).read_text())
    assert sorted(rows) == ["adamw", "blockllm"] and all("FINISHED" in row for row in rows.values()), rows


def test_mlflow_run_resume_finishes_through_its_own_pointer_run(resumed, cli_env):
    """`mlflow run -P resume=ID` makes a run before our code runs: it is tagged with the parent it resumes
    and ended by `mlflow run` from the exit code; the comparison stays in the original parent run."""
    client, parent = resumed.client, resumed.parent
    ends = {m: r[0].info.end_time for m, r in children_by_method(client, parent).items()}
    proc = subprocess.run([str(BIN / "mlflow"), "run", str(ROOT), "--env-manager", "local", "-P", f"resume={parent}"],
                          cwd=resumed.tmp, env={**cli_env, "MLFLOW_TRACKING_URI": resumed.uri},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [pointer] = client.search_runs(["0", client.get_run(parent).info.experiment_id],
                                   f"tags.`{Tag.COMPARISON_PARENT}` = '{parent}'")
    assert pointer.info.run_id != parent and pointer.info.status == "FINISHED"
    assert client.get_run(parent).info.status == "FINISHED"
    after = children_by_method(client, parent)
    assert {m: r[0].info.end_time for m, r in after.items()} == ends, "every method was finished: none ran again"


# ---- two comparisons at once on one store and one folder; failures beyond NaN ----------------------

@pytest.fixture(scope="module")
def two_at_once(cli_env, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("concurrent")
    uri, out = f"sqlite:///{tmp}/mlflow.db", tmp / "results"  # neither exists yet: both flows create them
    common = [*MICRO, "--output_dir", str(out), "--tracking_uri", uri]
    log_a, log_b = tmp / "a.log", tmp / "b.log"
    # adamw meets a fault of its file system: its checkpoint folder is a file (made here while its training
    # process starts up), so its first save raises, on the first attempt and on the retry. galore is killed
    # from here, like the kernel's OOM killer would.
    a = start_flow([*common, "--methods", "blockllm,adamw,galore", "--retries", "1"], tmp, cli_env, log_a)
    b = start_flow([*common, "--methods", "blockllm", "--retries", "0"], tmp, cli_env, log_b)
    try:
        adamw_dir = wait_for(lambda: next(out.glob("runs/*/adamw/seed-0"), None), a, log_a, "adamw's folder")
        (adamw_dir / "checkpoints").write_text("not a folder")
        galore_ckpts = wait_for(lambda: next(out.glob("runs/*/galore/seed-0/checkpoints"), None), a, log_a, "galore's folder")
        config = str(galore_ckpts.parent / "train_config.json")
        kills = []
        for attempt in range(2):  # the first attempt, then Prefect's retry
            after = kills[-1] if kills else 0
            wait_for(lambda: resumable_step(galore_ckpts) > after, a, log_a, f"a galore checkpoint after step {after}")
            [pid] = wait_for(lambda: training_pids(config), a, log_a, "galore's training process")
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: pid not in training_pids(config), a, log_a, "the end of the killed process")
            kills.append(resumable_step(galore_ckpts))
        rc_a, rc_b = a.wait(timeout=300), b.wait(timeout=300)
    finally:
        kill_group(a)
        kill_group(b)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("memopt").experiment_id
    parents = client.search_runs([experiment], f"tags.`{Tag.PARENT}` IS NULL", run_view_type=ViewType.ALL)
    by_methods = {",".join(sorted(child_runs(client, p.info.run_id))): p.info.run_id for p in parents}
    return SimpleNamespace(tmp=tmp, uri=uri, out=out, client=client, rc_a=rc_a, rc_b=rc_b, log_a=log_a, log_b=log_b,
                           kills=kills, parents=parents, a=by_methods.get("adamw,blockllm,galore"),
                           b=by_methods.get("blockllm"))


def test_two_comparisons_at_once_both_finish_whole(two_at_once):
    t, client = two_at_once, two_at_once.client
    assert t.rc_b == 0, t.log_b.read_text()[-3000:]
    assert len(t.parents) == 2 and t.a and t.b, [p.data.tags for p in t.parents]
    for parent, methods in ((t.a, ["adamw", "blockllm", "galore"]), (t.b, ["blockllm"])):
        runs = children_by_method(client, parent)
        assert sorted(runs) == methods and all(len(r) == 1 for r in runs.values()), (parent, runs)
        assert runs["blockllm"][0].info.status == "FINISHED"
        blockllm = seed_run(client, parent, "blockllm")
        for key in ("train_loss", "lr", "grad_norm"):
            assert sorted(history(client, blockllm.info.run_id, key)) == list(range(1, STEPS + 1)), key
        # Each training run's model is its own: its logged model holds the very weights its process wrote.
        local = load_file(t.out / "runs" / parent / "blockllm" / "seed-0" / "final" / "model.safetensors")
        model = client.get_logged_model(run_model_id(client, blockllm.info.run_id))
        logged = load_file(mlflow.artifacts.download_artifacts(
            artifact_uri=f"{model.artifact_location}/model/model.safetensors", dst_path=str(t.tmp / parent),
            tracking_uri=t.uri))
        assert logged.keys() == local.keys() and all(torch.equal(logged[k], local[k]) for k in local)
        assert blockllm.info.run_id in blockllm.info.artifact_uri
        # Each parent's report is its own: its methods, nobody else's.
        report = client.download_artifacts(parent, f"report/{TABLE}", str(t.tmp / parent))
        assert sorted(report_rows(Path(report).read_text())) == methods
        assert client.get_run(parent).info.status == ("FAILED" if parent == t.a else "FINISHED")
    # Both tokenized the same data into the same cache at the same time: one folder, no leftovers.
    assert [p.name.startswith("tokenized-") for p in (t.out / "cache").iterdir()] == [True]


def test_same_seed_same_metrics(two_at_once, resumed):
    """Three runs of the same training: two at the same time, one killed and resumed. Same numbers."""
    histories = []
    for client, parent in ((two_at_once.client, two_at_once.a), (two_at_once.client, two_at_once.b),
                           (resumed.client, resumed.parent)):
        run_id = seed_run(client, parent, "blockllm").info.run_id
        histories.append({key: history(client, run_id, key) for key in ("train_loss", "val_loss")})
    assert len(histories[0]["train_loss"]) == STEPS
    assert histories[0] == histories[1] == histories[2]


def test_an_exception_in_training_fails_its_method_alone_after_its_retry(two_at_once):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    t, client = two_at_once, two_at_once.client
    assert t.rc_a == 1, t.log_a.read_text()[-3000:]
    assert "error: not every method finished: adamw, galore failed" in t.log_a.read_text()
    [adamw] = children_by_method(client, t.a)["adamw"]
    assert adamw.info.status == "FAILED"
    reason = seed_run(client, t.a, "adamw").data.tags["memopt.failure_reason"]
    assert reason.startswith("FileExistsError"), reason
    assert adamw.data.tags["memopt.failure_reason"] == f"seed 0: {reason}"
    flow_run_id = uuid.UUID(client.get_run(t.a).data.tags[Tag.PREFECT_FLOW_RUN])
    with get_client(sync_client=True) as prefect:
        task_runs = prefect.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                           sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=50)  # the server needs both
    attempts = {r.name: r.run_count for r in task_runs if r.name.startswith("train-")}
    assert attempts == {"train-blockllm-seed0": 1, "train-adamw-seed0": 2, "train-galore-seed0": 2}, attempts
    assert "adamw" in report_rows((t.out / "runs" / t.a / "report" / TABLE).read_text())


def test_a_killed_training_process_is_retried_into_the_same_run_then_fails_with_its_reason(two_at_once):
    t, client = two_at_once, two_at_once.client
    assert children_by_method(client, t.a)["galore"][0].info.status == "FAILED"
    galore = seed_run(client, t.a, "galore")
    assert galore.info.status == "FAILED"
    assert galore.data.tags["memopt.failure_reason"].startswith("training process killed by SIGKILL")
    first_kill, second_kill = t.kills
    assert int(galore.data.tags["memopt.resumed_from_step"]) == first_kill, "the retry resumed this run"
    steps = history(client, galore.info.run_id, "train_loss")  # each step once, across both attempts
    assert set(range(1, second_kill + 1)) <= set(steps)
    row = report_rows((t.out / "runs" / t.a / "report" / TABLE).read_text())["galore"]
    assert "FAILED" in row and "SIGKILL" in row


# ---- bad input through `mlflow run` --------------------------------------------------------------------

def test_mlflow_run_with_bad_input_leaves_no_run_running(cli_env, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = subprocess.run([str(BIN / "mlflow"), "run", str(ROOT), "--env-manager", "local", "-P", "batch_size=0",
                           "-P", f"output_dir={tmp_path}/results"], cwd=tmp_path,
                          env={**cli_env, "MLFLOW_TRACKING_URI": uri}, capture_output=True, text=True, timeout=120)
    # mlflow run exits 1 on any failure of its command: our 2 is not passed on.
    assert proc.returncode == 1
    assert "error: --batch_size: got 0; must be an integer >= 1" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    [run] = MlflowClient(uri).search_runs(["0"], run_view_type=ViewType.ALL)  # the one mlflow run made
    assert run.info.status == "FAILED"
    assert run.data.tags["memopt.failure_reason"].startswith("bad input: --batch_size")
    assert not (tmp_path / "results").exists()


# ---- security -----------------------------------------------------------------------------------------

def test_no_secret_reaches_mlflow_or_the_output_folder(resumed, two_at_once):
    checked = 0
    for t in (resumed, two_at_once):
        experiments = [e.experiment_id for e in t.client.search_experiments(view_type=ViewType.ALL)]
        for run in t.client.search_runs(experiments, run_view_type=ViewType.ALL):
            text = repr((run.data.params, run.data.tags, sorted(run.data.metrics), run.info.run_name))
            for secret in SECRETS.values():
                assert secret not in text, (run.info.run_id, secret)
            checked += 1
        for path in t.out.rglob("*"):
            if path.is_file() and path.suffix in (".json", ".md", ".txt", ".yaml"):
                assert not any(s in path.read_text(errors="replace") for s in SECRETS.values()), path
    assert checked >= 6


def test_servers_bind_127_0_0_1():
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, get_current_settings

    # Every server command the docs give binds loopback.
    for name in ("README.md", "Makefile", "flows/serve.py"):
        for line in (ROOT / name).read_text().splitlines():
            if re.search(r"\b(mlflow (ui|server)|prefect server start)\b", line):
                assert "--host 127.0.0.1" in line, f"{name}: {line.strip()}"
    # Prefect's ephemeral server (what `python -m flows.compare` starts without PREFECT_API_URL).
    assert SubprocessASGIServer().address.startswith("http://127.0.0.1:")
    assert get_current_settings().server.api.host == "127.0.0.1"
    assert get_current_settings().runner.server.host in ("127.0.0.1", "localhost")  # flows.serve's runner


def test_checkpoints_load_weights_only(tmp_path):
    sources = [p for d in ("memopt", "tasks", "flows") for p in (ROOT / d).rglob("*.py") if not p.name.endswith("_test.py")]
    loads = [(p, line) for p in sources for line in p.read_text().splitlines() if "torch.load(" in line]
    assert loads and all("weights_only=True" in line for _, line in loads), loads
    # Behaviour: a trainer state holding an arbitrary object (pickle can run code on load) is refused.
    model = torch.nn.Linear(2, 2)
    saved = checkpoint.save(tmp_path, 1, model, {"step": 1})
    assert checkpoint.load(saved, model) == {"step": 1}
    torch.save({"step": 1, "payload": SimpleNamespace(x=1)}, saved / "trainer_state.pt")
    with pytest.raises(checkpoint.CheckpointError, match="trainer_state.pt") as refused:
        checkpoint.load(saved, model)
    assert isinstance(refused.value.__cause__, pickle.UnpicklingError)


def test_weights_are_safetensors(resumed):
    client = resumed.client
    for method in child_runs(client, resumed.parent):
        # the seed run's logged model, by its id: MLflow resolves a run's `model` path through its global store
        model_id, names, folders = run_model_id(client, seed_run(client, resumed.parent, method).info.run_id), set(), [None]
        while folders:
            for a in client.list_logged_model_artifacts(model_id, folders.pop()):
                if a.is_dir:
                    folders.append(a.path)
                else:
                    names.add(Path(a.path).name)
        assert "model.safetensors" in names, (method, names)
        assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))], (method, names)
    for ckpt in resumed.out.glob("runs/*/*/seed-*/checkpoints/step-*"):
        assert sorted(p.name for p in ckpt.iterdir()) == ["model.safetensors", "trainer_state.pt"]
