"""Checkpoints that cannot be read (issue 17): a `latest` naming a missing or incomplete folder, a truncated
safetensors file. A resume falls back to the previous checkpoint that reads whole and tags the run with what it
skipped, or fails with one error naming the file; it never trains again from step 0 into a run that has metrics
without saying so.

Real checkpoints written by `checkpoint.save`, a real sqlite store, training in this process (memopt.train.train)
and, for the error's exit code and retry policy, the train task's own training process.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from memopt import checkpoint
from memopt.blocks import tokenize_dataset
from memopt.checkpoint import CheckpointError
from memopt.config import TrainConfig
from memopt.data import DEFAULT_DATASET
from memopt.distributed import World
from memopt.tracking import RunLogger, child_run, open_parent_run
from memopt.train import train
from memopt.trainer import Trainer
from memopt.vocabulary import Tag

STEPS = 6


def truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


# ---- checkpoint.resume on its own -------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    """Checkpoints of steps 2 and 4 of a small module (two kept); the module's weights differ at each."""
    model = torch.nn.Linear(4, 4)
    weights = {}
    for step in (2, 4):
        with torch.no_grad():
            model.weight.fill_(step)
        checkpoint.save(tmp_path, step, model, {"step": step}, keep=2)
        weights[step] = model.weight.clone()
    return tmp_path, model, weights


def test_no_checkpoint_at_all_is_a_fresh_start(tmp_path):
    assert checkpoint.resume(tmp_path / "checkpoints", torch.nn.Linear(4, 4)) is None


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(saved):
    directory, model, weights = saved
    truncate(directory / "step-00000004" / "model.safetensors")
    state, folder, skipped = checkpoint.resume(directory, model)
    assert (state, folder.name) == ({"step": 2}, "step-00000002")
    assert torch.equal(model.weight, weights[2])
    [why] = skipped
    assert why.startswith(f"{directory}/step-00000004/model.safetensors (") and "Error while deserializing header" in why


@pytest.mark.parametrize("damage, named", [
    ("latest names a missing folder", "step-00000004: missing (named by {dir}/latest)"),
    ("truncated weights", "step-00000004/model.safetensors ("),
    ("truncated trainer state", "step-00000004/trainer_state.pt ("),
    ("incomplete folder", "step-00000004/trainer_state.pt: missing"),
])
def test_an_only_checkpoint_that_does_not_read_is_one_error_naming_the_file(saved, damage, named):
    directory, model, _ = saved
    shutil.rmtree(directory / "step-00000002")  # save_total_limit 1: nothing to fall back to
    newest = directory / "step-00000004"
    if damage == "latest names a missing folder":
        shutil.rmtree(newest)
    elif damage == "truncated weights":
        truncate(newest / "model.safetensors")
    elif damage == "truncated trainer state":
        truncate(newest / "trainer_state.pt")
    else:
        (newest / "trainer_state.pt").unlink()
    with pytest.raises(CheckpointError) as err:
        checkpoint.resume(directory, model)
    message = str(err.value)
    assert message.startswith(f"no checkpoint in {directory} reads whole: ") and "\n" not in message
    assert named.format(dir=directory) in message
    assert message.endswith(f"Delete {directory} to train this method again from step 0")


# ---- a training process resuming ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_once(tmp_path_factory) -> TrainConfig:
    """A run of STEPS steps trained to the end in this process, its checkpoints of steps 3 and 6 kept."""
    tmp = tmp_path_factory.mktemp("trained")
    data_dir = str(tokenize_dataset(DEFAULT_DATASET, None, 32, tmp / "tokens", vocab_size=256).root)
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(uri)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp)  # the store's artifact folder is made in the working folder
        run_id = child_run(client, open_parent_run(client, None, run_name="checkpoints"), "adamw").info.run_id
        cfg = TrainConfig(method="adamw", model_name="llama-micro", data_dir=data_dir, output_dir=str(tmp / "adamw"),
                          run_id=run_id, tracking_uri=uri, batch_size=4, max_steps=STEPS, eval_every=3,
                          checkpoint_every=3, save_total_limit=2)
        train(cfg)
    return cfg


def trained(tmp: Path, trained_once: TrainConfig, keep: int) -> TrainConfig:
    """A copy of that run (its store, its folder) under `tmp`, with the newest `keep` checkpoints."""
    shutil.copy(trained_once.tracking_uri.removeprefix("sqlite:///"), tmp / "mlflow.db")
    shutil.copytree(trained_once.output_dir, tmp / "adamw")
    for old in sorted((tmp / "adamw" / "checkpoints").glob("step-*"))[:-keep]:
        shutil.rmtree(old)
    return trained_once.model_copy(update={"tracking_uri": f"sqlite:///{tmp}/mlflow.db", "output_dir": str(tmp / "adamw"),
                                           "training": trained_once.training.model_copy(update={"save_total_limit": keep})})


def steps_logged(cfg: TrainConfig) -> list[int]:
    return sorted(m.step for m in MlflowClient(cfg.tracking_uri).get_metric_history(cfg.run_id, "train_loss"))


def test_a_resume_past_a_damaged_checkpoint_tags_the_run_with_what_it_skipped(tmp_path, trained_once, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = trained(tmp_path, trained_once, keep=2)
    ckpts = Path(cfg.output_dir) / "checkpoints"
    truncate(ckpts / "step-00000006" / "model.safetensors")
    train(cfg)  # again: from step 3, the previous checkpoint
    tags = MlflowClient(cfg.tracking_uri).get_run(cfg.run_id).data.tags
    assert tags[Tag.RESUMED_FROM_STEP] == "3"
    assert tags[Tag.SKIPPED_CHECKPOINTS].startswith(f"resumed from step 3, skipping {ckpts}/step-00000006/model.safetensors")
    assert steps_logged(cfg) == list(range(1, STEPS + 1)), "each step once"


def test_no_checkpoint_left_under_a_run_with_metrics_is_said_not_done_silently(tmp_path, trained_once, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = trained(tmp_path, trained_once, keep=1)
    shutil.rmtree(Path(cfg.output_dir) / "checkpoints")
    logger = RunLogger(cfg.tracking_uri, cfg.run_id)
    try:
        trainer = Trainer(cfg, World(), logger)
    finally:
        logger.close()
    assert trainer.step == 0
    said = MlflowClient(cfg.tracking_uri).get_run(cfg.run_id).data.tags[Tag.RESTARTED_FROM_ZERO]
    assert said == (f"no checkpoint in {cfg.output_dir}/checkpoints: trained again from step 0; the run's metrics "
                    f"through step {STEPS} were logged before and are not logged again")
    assert f"adamw: {said}" in capsys.readouterr().err


def test_an_unreadable_only_checkpoint_fails_the_process_once_naming_the_file(tmp_path, trained_once, monkeypatch):
    """The train task's real process: exit 3 (not retried: the same file gives the same error), the reason tagged,
    and nothing trained again from step 0."""
    from tasks.train import TrainingFailed
    from tasks.train import train as train_task

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))  # this checkout's memopt.train
    cfg = trained(tmp_path, trained_once, keep=1)
    weights = Path(cfg.output_dir) / "checkpoints" / "step-00000006" / "model.safetensors"
    truncate(weights)
    history = MlflowClient(cfg.tracking_uri).get_metric_history(cfg.run_id, "train_loss")
    with pytest.raises(TrainingFailed) as err:
        train_task.fn(cfg)
    assert not err.value.retriable
    assert err.value.reason.startswith(f"CheckpointError: no checkpoint in {weights.parents[1]} reads whole: {weights} (")
    run = MlflowClient(cfg.tracking_uri).get_run(cfg.run_id)
    assert run.data.tags[Tag.FAILURE_REASON] == err.value.reason
    assert Tag.RESTARTED_FROM_ZERO not in run.data.tags
    assert MlflowClient(cfg.tracking_uri).get_metric_history(cfg.run_id, "train_loss") == history
