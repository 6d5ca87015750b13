"""Prefect task: tokenize a dataset once; later runs reuse the folder (and Prefect's cache).

The cache key is the data's identity, not its name: an edited local file is
tokenized again. The tokenized folder is named by a hash of the same identity.
"""
from __future__ import annotations

from functools import partial
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.entities import DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE, CacheKeyFnPolicy
from prefect.context import TaskRunContext

from memopt.blocks import TokenizedData, is_complete, tokenize_dataset, tokenized_dir, tokenized_key
from memopt.config import CompareConfig, TrainingOptions
from memopt.models import is_preset
from memopt.preflight import check_blocks

# MLflow's dataset contexts for the two tokenized splits.
CONTEXTS = {"train": "training", "validation": "validation"}


def _content_key(context: TaskRunContext, inputs: dict[str, Any]) -> str:
    return tokenized_key(inputs["dataset"], inputs["tokenizer_name"], inputs["seq_len"], inputs["seed"])


def log_dataset_inputs(data: TokenizedData, run_id: str, tracking_uri: str | None = None) -> None:
    """Log the train and validation blocks as inputs of the MLflow run `run_id` (by id: MLflow's
    active run is per thread, and a task runs in Prefect's worker thread)."""
    inputs = [
        # `_to_mlflow_entity` is how mlflow.log_input itself turns a dataset into an entity.
        DatasetInput(data.to_mlflow_dataset(split)._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, context)])
        for split, context in CONTEXTS.items()
    ]
    client = MlflowClient(tracking_uri)
    try:
        client.log_inputs(run_id, datasets=inputs)
    except MlflowException:
        # The sql store checks for the dataset row, then inserts it: a comparison logging the same
        # dataset at the same moment can insert it in between (UNIQUE constraint). Now it exists.
        client.log_inputs(run_id, datasets=inputs)


# INPUTS includes parent_run_id: given one, a new run runs the body again, which reuses the folder on disk
# (milliseconds) and logs the dataset to it. A comparison tokenizes before its parent run exists (the batch is
# checked against the tokens first) and logs the dataset to the parent itself.
@task(
    cache_policy=INPUTS + TASK_SOURCE + CacheKeyFnPolicy(cache_key_fn=_content_key),
    persist_result=True,
    task_run_name="tokenize {dataset} seq_len={seq_len}",
)
def tokenize(
    dataset: str,
    tokenizer_name: str | None,
    seq_len: int,
    cache_dir: str,
    seed: int,
    parent_run_id: str | None = None,
    tracking_uri: str | None = None,
    training: TrainingOptions | None = None,
) -> str:
    """Tokenize `dataset` into a folder under `cache_dir` (reused when complete); returns its path. With `training`,
    a batch the data cannot fill is a ConfigError before the folder is published (memopt.preflight.check_blocks)."""
    out_dir = tokenized_dir(cache_dir, dataset, tokenizer_name, seq_len, seed)
    check = partial(check_blocks, training, dataset, seq_len) if training is not None else None
    data = tokenize_dataset(dataset, tokenizer_name, seq_len, out_dir, seed=seed, check=check)
    if parent_run_id:
        log_dataset_inputs(data, parent_run_id, tracking_uri)
    return str(data.root)


def tokenize_for(config: CompareConfig, model_name: str | None = None) -> str:
    """`tokenize` for a comparison: its data, the tokenizer of `model_name` (default: the comparison's model; a
    base model's once it is made), seq_len and seed, checked against its batch. A cached result whose folder was
    deleted since is refreshed, so the path returned always holds the tokens."""
    tokenizer = config.tokenizer_name() if model_name is None else None if is_preset(model_name) else model_name
    cache, seed = config.cache_dir(), config.training.seed
    gone = not is_complete(tokenized_dir(cache, config.dataset, tokenizer, config.seq_len, seed))
    return tokenize.with_options(refresh_cache=gone)(config.dataset, tokenizer, config.seq_len, cache, seed,
                                                     training=config.training)
