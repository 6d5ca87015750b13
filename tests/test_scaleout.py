"""Beyond one process: the training options every method shares, model presets, DDP through torchrun,
an MLflow tracking server and Prefect work pools. Real components throughout (sqlite MLflow stores,
real torchrun with gloo, a real `mlflow server`, a real Prefect worker)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from memopt.blocks import TokenizedData, tokenize_dataset
from memopt.config import CompareConfig, TrainConfig
from memopt.data import DEFAULT_DATASET
from memopt.models import build_model
from memopt.tracking import child_run, open_parent_run, run_model_id
from memopt.train import train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("tokens") / "micro"
    return str(tokenize_dataset(DEFAULT_DATASET, None, 32, root, vocab_size=256).root)


def make_config(tmp: Path, data_dir: str, name: str, method: str = "adamw", **overrides) -> TrainConfig:
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(uri)
    parent = open_parent_run(client, None, run_name=name)
    run_id = child_run(client, parent, method).info.run_id
    fields = dict(
        method=method, model_name="llama-micro", data_dir=data_dir, output_dir=str(tmp / name / method),
        run_id=run_id, tracking_uri=uri, batch_size=4, max_steps=3, eval_every=100, checkpoint_every=100,
        memory_interval_s=0.5,
    )
    return TrainConfig(**{**fields, **overrides})


def final_weights(cfg: TrainConfig) -> dict[str, torch.Tensor]:
    return load_file(str(Path(cfg.output_dir) / "final" / "model.safetensors"))


# --- 1. training options -----------------------------------------------------------------------

def test_accumulation_equals_the_whole_batch_at_once(data_dir, tmp_path):
    whole = make_config(tmp_path, data_dir, "whole", batch_size=8)
    accumulated = make_config(tmp_path, data_dir, "accumulated", batch_size=2, total_batch_size=8)
    train(whole)
    train(accumulated)
    expected, got = final_weights(whole), final_weights(accumulated)
    initial = build_model("llama-micro", vocab_size=TokenizedData(Path(data_dir)).vocab_size).state_dict()
    assert expected.keys() == got.keys()
    for name in expected:
        assert not torch.equal(expected[name], initial[name]), f"{name} did not train"
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    client = MlflowClient(accumulated.tracking_uri)
    params = client.get_run(accumulated.run_id).data.params
    assert (params["grad_accum_steps"], params["global_batch_size"]) == ("4", "8")
    whole_loss = client.get_metric_history(whole.run_id, "train_loss")
    accumulated_loss = client.get_metric_history(accumulated.run_id, "train_loss")
    assert [m.value for m in accumulated_loss] == pytest.approx([m.value for m in whole_loss], rel=1e-5)
    # The report's Tokens/s counts the global batch (8 sequences a step), not the per-process batch_size (2).
    from memopt.report import method_result

    step_times = [m.value for m in client.get_metric_history(accumulated.run_id, "step_time_s")]
    tokens_per_s = method_result(client, client.get_run(accumulated.run_id)).tokens_per_s
    assert tokens_per_s == pytest.approx(8 * 32 * len(step_times) / sum(step_times))


def test_grad_clip_bounds_the_update(data_dir, tmp_path):
    """One AdamW step with eps far above |g| moves each weight by about lr·g/eps: the update is linear in
    the gradient, so its norm shows the gradient norm the optimizer saw."""
    lr, eps, clip = 1.0, 1e3, 0.05
    hp = {"eps": eps, "weight_decay": 0.0}
    cfg = make_config(tmp_path, data_dir, "clip", max_steps=1, warmup_steps=0, lr=lr, grad_clip=clip, method_args=hp)
    unclipped = make_config(tmp_path, data_dir, "unclipped", max_steps=1, warmup_steps=0, lr=lr, method_args=hp)
    train(cfg)
    train(unclipped)
    initial = build_model("llama-micro", vocab_size=TokenizedData(Path(data_dir)).vocab_size).state_dict()

    def seen_grad_norm(c: TrainConfig) -> float:
        w = final_weights(c)
        return math.sqrt(sum(((w[k] - initial[k]).double() ** 2).sum().item() for k in w)) * eps / lr

    logged = MlflowClient(cfg.tracking_uri).get_run(cfg.run_id).data.metrics["grad_norm"]
    assert logged > 10 * clip, "the test needs a gradient larger than the clip"
    assert seen_grad_norm(cfg) == pytest.approx(clip, rel=1e-3)
    assert seen_grad_norm(unclipped) == pytest.approx(logged, rel=1e-3)


def test_best_model_is_the_final_one(data_dir, tmp_path):
    """A learning rate too high once warmed up: validation loss falls, then rises; the final model is the best step's."""
    cfg = make_config(
        tmp_path, data_dir, "best", max_steps=6, eval_every=1, checkpoint_every=1, save_total_limit=6,
        lr=0.1, warmup_steps=3, metric_for_best_model="val_loss",
    )
    train(cfg)
    client = MlflowClient(cfg.tracking_uri)
    history = {m.step: m.value for m in client.get_metric_history(cfg.run_id, "val_loss") if m.step > 0}
    best_step = min(history, key=history.get)
    assert best_step != 6, f"the test needs a best step before the last one: {history}"
    metrics = client.get_run(cfg.run_id).data.metrics
    assert metrics["best_step"] == best_step and "best_val_loss" not in metrics, "its value is val_loss at best_step"
    at_best = load_file(str(Path(cfg.output_dir) / "checkpoints" / f"step-{best_step:08d}" / "model.safetensors"))
    final = final_weights(cfg)
    for name in final:
        assert torch.equal(final[name], at_best[name]), name
    kept = sorted(p.name for p in (Path(cfg.output_dir) / "checkpoints").glob("step-*"))
    assert kept == [f"step-{s:08d}" for s in range(1, 7)]


def test_save_total_limit_and_bf16_weights(data_dir, tmp_path):
    cfg = make_config(tmp_path, data_dir, "bf16", max_steps=3, checkpoint_every=1, save_total_limit=2, dtype="bf16")
    train(cfg)
    kept = sorted(p.name for p in (Path(cfg.output_dir) / "checkpoints").glob("step-*"))
    assert kept == ["step-00000002", "step-00000003"]
    assert {t.dtype for t in final_weights(cfg).values()} == {torch.bfloat16}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch_size", "4", "--total_batch_size", "6"], "--total_batch_size: got 6; must be a multiple of --batch_size × world size = 4 × 1"),
        (["--batch_size", "2", "--nproc_per_node", "2", "--total_batch_size", "6"], "2 × 2 = 4"),
        (["--total_batch_size", "-8"], "--total_batch_size: got -8"),
        (["--warmup_steps", "-1"], "--warmup_steps: got -1"),
        (["--max_steps", "5", "--warmup_steps", "6"], "at most --max_steps 5"),
        (["--dtype", "fp16"], "--dtype: got 'fp16'; must be one of fp32, bf16"),
        (["--grad_clip", "-1"], "--grad_clip: got -1; must be a number >= 0"),
        (["--total_batch_size", "x"], "--total_batch_size: got 'x'; must be an integer"),
        (["--warmup_steps", "few"], "--warmup_steps: got 'few'; must be an integer"),
        (["--grad_clip", "big"], "--grad_clip: got 'big'; must be a number"),
        (["--grad_clip", "inf"], "--grad_clip: got inf"),
        (["--save_total_limit", "0"], "--save_total_limit: got 0"),
        (["--metric_for_best_model", "answer_accuracy"], "measured once, on the final model"),
        (["--metric_for_best_model", "loss"], "must be empty (the last model) or one of val_loss, val_perplexity"),
        (["--nproc_per_node", "0"], "--nproc_per_node: got 0"),
        (["--nnodes", "2"], "--rdzv_endpoint: empty with --nnodes 2"),
        (["--nnodes", "2", "--rdzv_endpoint", "node0"], "--rdzv_endpoint: got 'node0'; must be HOST:PORT"),
    ],
)
def test_bad_training_options_are_one_clear_error_and_nothing_starts(args, message, tmp_path, capsys):
    from flows.compare import main

    defaults = ["--tracking_uri", f"sqlite:///{tmp_path}/mlflow.db", "--output_dir", str(tmp_path / "results"),
                "--model_name", "llama-micro"]
    assert main([*defaults, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "results").exists()


# --- 2. presets ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "name, vocab, low, high, tied",
    [  # Qwen's published sizes: 0.49B, 1.54B, 7.62B parameters at their own vocabularies
        ("qwen2-0.5b", 151936, 0.49e9, 0.50e9, True),
        ("qwen2-1b", 151936, 1.53e9, 1.55e9, True),
        ("qwen2-7b", 152064, 7.60e9, 7.63e9, False),
    ],
)
def test_qwen2_presets_have_their_published_sizes(name, vocab, low, high, tied):
    from transformers import Qwen2ForCausalLM

    from memopt import optim

    with torch.device("meta"):
        model = build_model(name, vocab_size=vocab)
        optimizer = optim.build("galore", model, rank=128)  # GaLore finds the 2-D attention/MLP weights
    assert isinstance(model, Qwen2ForCausalLM)
    assert low <= sum(p.numel() for p in model.parameters()) <= high
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    projected = [p for g in optimizer.param_groups if g.get("rank") for p in g["params"]]
    assert len(projected) == 7 * model.config.num_hidden_layers


# --- 3. DDP through torchrun ---------------------------------------------------------------------

DDP_METHODS = {
    # a projector refresh (SVD of the averaged gradient) every 2 steps
    "galore": {"rank": 8, "update_proj_gap": 2},
    # a re-selection check every step (it fires here at step 2: with so small an lr the losses follow the batches),
    # so the set of tensors with a gradient changes under DDP; a probe every 2 steps
    "blockllm": {"lr": 1e-5, "update_freq": 1, "patience": 1, "param_update_interval": 2, "sparsity": 0.8},
}


@pytest.mark.parametrize("method", list(DDP_METHODS))
def test_two_process_ddp_equals_one_process_on_the_same_global_batch(method, data_dir, tmp_path):
    from tasks.train import train as train_task

    common = dict(method=method, max_steps=5, eval_every=2, checkpoint_every=5, method_args=DDP_METHODS[method])
    single = make_config(tmp_path, data_dir, "single", batch_size=4, **common)
    ddp = make_config(tmp_path, data_dir, "ddp", batch_size=2, nproc_per_node=2, **common)
    train(single)
    train_task.fn(ddp)  # the task launches `python -m torch.distributed.run --nproc_per_node 2 ...` (gloo)

    client = MlflowClient(ddp.tracking_uri)
    run = client.get_run(ddp.run_id)
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["memopt.param_digest.rank0"] == tags["memopt.param_digest.rank1"]
    assert tags["memopt.ranks_in_sync"] == "true"
    assert metrics["peak_rss_mb_rank0"] > 100 and metrics["peak_rss_mb_rank1"] > 100
    assert run.data.params["world_size"] == "2" and run.data.params["global_batch_size"] == "4"
    for key in ("train_loss", "grad_norm", "val_loss", "peak_rss_mb_rank1"):  # rank 0 alone logs: each step once
        steps = [m.step for m in client.get_metric_history(ddp.run_id, key)]
        assert len(steps) == len(set(steps)), (key, steps)
    assert len(client.get_metric_history(ddp.run_id, "train_loss")) == 5
    experiment = client.get_experiment_by_name("memopt").experiment_id
    assert len(client.search_runs([experiment])) == 4, "two parents, two children: no rank made a run of its own"

    initial = build_model("llama-micro", vocab_size=TokenizedData(Path(data_dir)).vocab_size).state_dict()
    expected, got = final_weights(single), final_weights(ddp)
    moved = 0
    for name in expected:  # what training changed, equal up to float rounding (a mean of two halves, summed)
        delta_single, delta_ddp = expected[name] - initial[name], got[name] - initial[name]
        scale = delta_single.abs().max().item()
        torch.testing.assert_close(delta_ddp, delta_single, rtol=1e-3, atol=1e-3 * scale, msg=lambda m: f"{name}: {m}")
        moved += bool(delta_single.abs().max() > 0)
    assert moved >= 8

    def trainer_state(cfg):
        return torch.load(Path(cfg.output_dir) / "checkpoints" / "step-00000005" / "trainer_state.pt", weights_only=True)

    state, reference = trainer_state(ddp)["optimizer"], trainer_state(single)["optimizer"]
    if method == "blockllm":
        extra = state["blockllm"]
        assert extra["num_selections"] >= 2, "a re-selection under DDP"
        assert 0 < extra["selected"].sum() < len(extra["selected"]), "some tensors had no gradient under DDP"
        for key in ("selected", "visits"):
            assert torch.equal(extra[key], reference["blockllm"][key]), key
    else:
        projectors = [s["proj"] for s in state["state"].values() if "proj" in s]
        assert projectors, "GaLore refreshed its projectors"
        reference_projectors = [s["proj"] for s in reference["state"].values() if "proj" in s]
        for p, q in zip(projectors, reference_projectors):  # singular vectors: equal up to sign
            torch.testing.assert_close(p.abs(), q.abs(), rtol=1e-3, atol=1e-4)


# --- 4. a tracking server ------------------------------------------------------------------------

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on loopback: SQL (sqlite) backend, artifacts proxied into a folder."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    port = free_port()
    artifacts = tmp_path / "server-artifacts"
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--serve-artifacts",
           "--artifacts-destination", str(artifacts)]
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                urllib.request.urlopen(url + "/health", timeout=2).read()
                break
            except OSError:
                assert time.monotonic() < deadline, "mlflow server did not answer /health in 120 s"
                time.sleep(0.5)
        yield url, artifacts
    finally:
        os.killpg(proc.pid, 15)  # the server and its uvicorn worker: its own process group
        proc.wait(timeout=30)
        log.close()


def test_the_flow_runs_against_a_tracking_server(prefect_server, mlflow_server, tmp_path):
    from flows.compare import compare_optimizers
    from memopt.tracking import child_runs, seed_runs

    url, artifacts = mlflow_server
    statuses = compare_optimizers(CompareConfig(
        methods=["adamw"], model_name="llama-micro", batch_size=2, total_batch_size=4, seq_len=32, max_steps=3,
        eval_every=1, checkpoint_every=3, metric_for_best_model="val_loss", output_dir=str(tmp_path / "results"),
        tracking_uri=url, regime="pretrain", sweep_steps=0,
    ))
    assert statuses == {"adamw": "FINISHED"}
    client = MlflowClient(url)
    [parent] = client.search_runs([client.get_experiment_by_name("memopt").experiment_id],
                                  filter_string="tags.`mlflow.parentRunId` IS NULL")
    assert child_runs(client, parent.info.run_id)["adamw"].info.status == "FINISHED"
    child = seed_runs(client, child_runs(client, parent.info.run_id)["adamw"].info.run_id)[0]  # the training run
    assert child.info.status == "FINISHED"
    assert child.info.artifact_uri.startswith("mlflow-artifacts:"), "artifacts go through the server"
    assert child.data.params["grad_accum_steps"] == "2" and "best_step" in child.data.metrics
    model_id = run_model_id(client, child.info.run_id)
    assert {"model.safetensors", "config.json"} <= {Path(a.path).name for a in client.list_logged_model_artifacts(model_id, "model")}
    on_server = {p.name for p in artifacts.rglob("*") if p.is_file()}
    assert {"model.safetensors", "config.json"} <= on_server, "the server stored the model in its artifact folder"


# --- 5. Prefect work pools -----------------------------------------------------------------------

# About 45 s on an idle 2-core machine: a worker, a fresh flow-run process, tokenize, train, evaluate, report.
def test_a_worker_runs_the_deployed_flow_from_its_pool(prefect_server, tmp_path):
    """The deployment lands in a process pool limited to one flow run; a real `prefect worker` subprocess picks
    the run up (--run-once) and the comparison finishes in the MLflow store the parameters name."""
    import os
    import subprocess
    import sys

    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL
    from prefect.utilities.asyncutils import run_coro_as_sync

    from flows.deploy import deploy

    pool = f"memopt-test-{tmp_path.name[-12:]}".replace("_", "-")
    deploy(pool, "compare-test")

    async def read_pool():
        async with get_client() as client:
            return await client.read_work_pool(pool)

    assert run_coro_as_sync(read_pool()).concurrency_limit == 1
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = {"methods": ["adamw"], "model_name": "llama-micro", "seq_len": 32, "output_dir": str(tmp_path / "results"),
              "tracking_uri": uri, "regime": "pretrain", "sweep_steps": 0,
              "training": {"batch_size": 2, "max_steps": 2, "eval_every": 2, "checkpoint_every": 2}}
    parameters = {"config": config}
    flow_run = run_deployment("compare-optimizers/compare-test", parameters=parameters, timeout=0)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PREFECT_LOCAL_STORAGE_PATH": str(tmp_path / "prefect-results")}
    worker = subprocess.run([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--run-once", "--limit", "1"],
                            env=env, capture_output=True, text=True, timeout=400, cwd=tmp_path)

    async def read_run():
        async with get_client() as client:
            return await client.read_flow_run(flow_run.id)

    state = run_coro_as_sync(read_run()).state
    assert state.is_completed(), f"{state}\n{worker.stdout[-3000:]}\n{worker.stderr[-3000:]}"
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("memopt").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3, "the comparison, the method, its seed run"
