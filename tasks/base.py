"""The base-model task: the finetune regime on a preset first needs a pretrained model, made here once.

The preset is pretrained with AdamW on `base_dataset` (the embedded default: general English text,
memopt/textgen.py, not the task) through the same train task and training process as every method,
in an MLflow run of role base under the comparison that makes it. Its final model (with the BPE
tokenizer trained on that text) is logged as an MLflow model and published into a folder named by a
digest of everything it depends on (`BaseSpec`): `OUTPUT_DIR/cache/base-DIGEST/model/`, with
`base.json` (written last: it marks the folder complete) naming the run and the model. Later
comparisons with the same spec and output folder find it (and Prefect's cache, keyed on the digest and
the folder) and train nothing. The methods then fine-tune `model/` on the task data, tokenized with its tokenizer.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from mlflow import MlflowClient
from prefect import task
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy
from prefect.context import TaskRunContext
from pydantic import BaseModel, ConfigDict

from memopt.config import CompareConfig, TrainConfig, TrainingOptions
from memopt.data import dataset_identity
from memopt.tracking import fail_run, log_model, nested_run, reopen_run
from memopt.vocabulary import Role, Tag
from tasks.data import tokenize
from tasks.train import TrainingFailed, train

# Bump when the way a base model is made changes without its spec changing: the digest keys on it.
BASE_VERSION = 1
MARKER = "base.json"


class BaseSpec(BaseModel):
    """Everything a base model depends on; its digest names the folder and Prefect's cache key."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    dataset: str
    dataset_identity: str  # the data's identity, not its name: an edited local file makes a new base
    steps: int
    lr: float
    batch_size: int
    seq_len: int
    seed: int
    dtype: str
    version: int = BASE_VERSION

    @classmethod
    def of(cls, cfg: CompareConfig) -> "BaseSpec":
        seed = cfg.training.seed
        return cls(model_name=cfg.model_name, dataset=cfg.base_dataset, dataset_identity=dataset_identity(cfg.base_dataset, seed),
                   steps=cfg.base_steps, lr=cfg.base_lr, batch_size=cfg.training.batch_size, seq_len=cfg.seq_len,
                   seed=seed, dtype=cfg.training.dtype)

    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]

    def folder(self, output_dir: str | Path) -> Path:
        return Path(output_dir) / "cache" / f"base-{self.digest()}"


def base_record(folder: str | Path) -> dict | None:
    """What `base.json` says (run_id, model_id, model_dir, spec), or None while the folder is incomplete."""
    marker = Path(folder) / MARKER
    return json.loads(marker.read_text()) if marker.is_file() else None


def _key(context: TaskRunContext, inputs: dict) -> str:
    """The spec's digest and the folder it names: another output folder has its own base model."""
    return f"{inputs['spec'].digest()} {inputs['spec'].folder(inputs['output_dir']).resolve()}"


@task(cache_policy=TASK_SOURCE + CacheKeyFnPolicy(cache_key_fn=_key), persist_result=True,
      task_run_name="base-model {spec.model_name}")
def base_model(spec: BaseSpec, training: TrainingOptions, output_dir: str, parent_run_id: str, tracking_uri: str,
               retries: int = 1) -> str:
    """The base model's folder: made by pretraining `spec.model_name`, or found complete. `training` gives
    the options the base run shares with the comparison (evaluation, checkpoints, memory sampling)."""
    folder = spec.folder(output_dir)
    if base_record(folder):
        return str(folder)
    client = MlflowClient(tracking_uri)
    run = nested_run(client, parent_run_id, Role.BASE, "base-model", {Tag.BASE_KEY: spec.digest()})
    reopen_run(client, run)  # one a stop ended KILLED continues
    run_id = run.info.run_id
    data_dir = tokenize(spec.dataset, None, spec.seq_len, str(Path(output_dir) / "cache"), spec.seed,
                        parent_run_id=run_id, tracking_uri=tracking_uri)
    options = TrainingOptions.model_validate({
        **training.model_dump(), "batch_size": spec.batch_size, "max_steps": spec.steps, "lr": spec.lr,
        "seed": spec.seed, "dtype": spec.dtype, "total_batch_size": 0, "warmup_steps": None, "metric_for_best_model": "",
    })
    cfg = TrainConfig(method="adamw", model_name=spec.model_name, data_dir=data_dir, output_dir=str(folder / f"train-{run_id}"),
                      run_id=run_id, tracking_uri=tracking_uri, training=options)
    try:
        final = train.with_options(retries=retries, task_run_name="train-base-model")(cfg)
    except TrainingFailed as exc:
        fail_run(client, run_id, exc.reason)
        raise
    model_id = log_model(client, run_id, final, name="base-model")
    _publish(Path(final), folder, {"run_id": run_id, "model_id": model_id, "spec": spec.model_dump()})
    client.set_terminated(run_id, "FINISHED")
    return str(folder)


def _publish(final: Path, folder: Path, record: dict) -> None:
    """Move the final model to `folder/model` and write the marker last; the training folder with its
    checkpoints goes. A complete base made meanwhile by another comparison wins."""
    if base_record(folder):
        return
    model_dir = folder / "model"
    shutil.rmtree(model_dir, ignore_errors=True)  # left by a publish interrupted before its marker
    os.rename(final, model_dir)
    record["model_dir"] = str(model_dir.resolve())
    tmp = folder / f".{MARKER}.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, folder / MARKER)
    shutil.rmtree(final.parent, ignore_errors=True)
