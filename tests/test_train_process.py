"""The training process on its own: resume after kill -9 is bit for bit, and each step is logged once."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from memopt import checkpoint, optim
from memopt.blocks import tokenize_dataset
from memopt.data import DEFAULT_DATASET
from memopt.tracking import child_run, open_parent_run
from memopt.config import TrainConfig

STEPS = 12


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("tokens") / "micro"
    return str(tokenize_dataset(DEFAULT_DATASET, None, 32, root, vocab_size=256).root)


def make_config(tmp: Path, data_dir: str, method: str, name: str) -> TrainConfig:
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(uri)
    parent = open_parent_run(client, None, run_name=name)
    run_id = child_run(client, parent, method).info.run_id
    return TrainConfig(
        method=method, model_name="llama-micro", data_dir=data_dir, output_dir=str(tmp / name / method),
        run_id=run_id, tracking_uri=uri, batch_size=4, max_steps=STEPS, eval_every=4, checkpoint_every=3,
        memory_interval_s=0.05, method_args={"rank": 8, "update_proj_gap": 4} if method == "galore" else {},
    )


def start(cfg: TrainConfig) -> subprocess.Popen:
    path = Path(cfg.output_dir) / "train_config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg.to_json(path)
    return subprocess.Popen([sys.executable, "-m", "memopt.train", str(path)], stderr=subprocess.DEVNULL)


def final_weights(cfg: TrainConfig) -> dict[str, torch.Tensor]:
    return load_file(str(Path(cfg.output_dir) / "final" / "model.safetensors"))


# adalomo: the engine calls its backward (MethodSpec.owns_backward) and its states live outside optimizer.state
@pytest.mark.parametrize("method", ["adamw", "galore", "blockllm", "adalomo"])
def test_kill_9_then_resume_equals_an_uninterrupted_run(method, data_dir, tmp_path):
    reference = make_config(tmp_path, data_dir, method, "reference")
    assert start(reference).wait(timeout=300) == 0

    resumed = make_config(tmp_path, data_dir, method, "resumed")
    proc = start(resumed)
    ckpt_dir = Path(resumed.output_dir) / "checkpoints"
    deadline = time.monotonic() + 240
    while (latest := checkpoint.latest(ckpt_dir)) is None or latest.name < "step-00000006":
        assert proc.poll() is None and time.monotonic() < deadline, "the process ended before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert start(resumed).wait(timeout=300) == 0

    expected, got = final_weights(reference), final_weights(resumed)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name

    client = MlflowClient(resumed.tracking_uri)
    no_gradients_left = optim.spec(method).steps_in_backward  # so no grad_norm either
    for key in ("train_loss", "lr", *(() if no_gradients_left else ("grad_norm",))):
        history = client.get_metric_history(resumed.run_id, key)
        assert sorted(m.step for m in history) == list(range(1, STEPS + 1)), key
        reference_values = {m.step: m.value for m in client.get_metric_history(reference.run_id, key)}
        assert {m.step: m.value for m in history} == reference_values, key
    assert sorted(m.step for m in client.get_metric_history(resumed.run_id, "val_loss")) == [0, 4, 8, 12]
    assert client.get_run(resumed.run_id).data.tags["memopt.resumed_from_step"] >= "6"
