"""The evaluate task: the final model of one method, measured on held-out data, logged to its child run."""
from __future__ import annotations

from pathlib import Path

import torch
from mlflow import MlflowClient
from prefect import task
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as transformers_logging

from memopt.blocks import TokenizedData
from memopt.evaluation import answer_accuracy, perplexity, validation_loss
from memopt.tracking import run_model_id
from memopt.vocabulary import Metric
from tasks.data import log_dataset_inputs


@task(name="evaluate")
def evaluate(
    model_dir: str,
    data_dir: str,
    run_id: str,
    tracking_uri: str,
    batch_size: int,
    step: int,
    accuracy_problems: int = 20,
) -> dict[str, float]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    transformers_logging.disable_progress_bar()  # its "Loading weights" bar, in every flow's log otherwise
    model = AutoModelForCausalLM.from_pretrained(Path(model_dir), use_safetensors=True).to(device)
    tokenizer = AutoTokenizer.from_pretrained(Path(model_dir))
    data = TokenizedData(Path(data_dir))
    loss = validation_loss(model, data.blocks("validation"), batch_size)
    metrics = {Metric.FINAL_VAL_LOSS: loss, Metric.FINAL_VAL_PERPLEXITY: perplexity(loss)}
    accuracy = answer_accuracy(model, tokenizer, data.eval_problems(accuracy_problems))
    if accuracy is not None:
        metrics[Metric.ANSWER_ACCURACY] = accuracy
    client = MlflowClient(tracking_uri)
    log_dataset_inputs(data, run_id, tracking_uri)  # the datasets of the run that trained the model
    # each metric tied to the logged model and the split it was measured on: MLflow links the model to the dataset
    validation, model_id = data.to_mlflow_dataset("validation"), run_model_id(client, run_id)
    for key, value in metrics.items():
        client.log_metric(run_id, key, value, step=step, dataset_name=validation.name, dataset_digest=validation.digest,
                          model_id=model_id)
    return metrics
