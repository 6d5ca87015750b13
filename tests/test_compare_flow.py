"""The comparison end to end: a real Prefect run, a real sqlite MLflow store, real training processes."""
from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from flows.compare import ComparisonIncomplete, compare_optimizers, main
from memopt.config import CompareConfig
from memopt.report import LOSS_PLOT, MEMORY_PLOT, TABLE
from memopt.tracking import child_runs

MICRO = {"model_name": "llama-micro", "batch_size": 4, "seq_len": 32, "eval_every": 3, "checkpoint_every": 3}


def parent_runs(client: MlflowClient):
    experiment = client.get_experiment_by_name("memopt")
    return client.search_runs([experiment.experiment_id], filter_string="tags.`mlflow.parentRunId` IS NULL")


@pytest.fixture(scope="module")
def finished_comparison(prefect_server, tmp_path_factory):
    """One small comparison of every pipeline method the flow's default runs, shared by the assertions below."""
    tmp = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{tmp}/mlflow.db"
    statuses = compare_optimizers(CompareConfig(
        methods=["adamw", "galore", "blockllm"], max_steps=6, output_dir=str(tmp / "results"), tracking_uri=uri, **MICRO
    ))
    return statuses, MlflowClient(uri), tmp


def test_every_method_finishes_in_its_own_child_run(finished_comparison):
    statuses, client, _ = finished_comparison
    assert statuses == {"adamw": "FINISHED", "galore": "FINISHED", "blockllm": "FINISHED"}
    [parent] = parent_runs(client)
    assert parent.info.status == "FINISHED"
    children = child_runs(client, parent.info.run_id)
    assert sorted(children) == ["adamw", "blockllm", "galore"]
    assert {r.info.status for r in children.values()} == {"FINISHED"}


def test_each_child_has_every_step_memory_samples_and_the_model(finished_comparison):
    _, client, _ = finished_comparison
    [parent] = parent_runs(client)
    for method, run in child_runs(client, parent.info.run_id).items():
        run_id = run.info.run_id
        for key in ("train_loss", "lr", "grad_norm", "step_time_s", "tokens_per_s"):
            steps = sorted(m.step for m in client.get_metric_history(run_id, key))
            assert steps == [1, 2, 3, 4, 5, 6], (method, key, steps)
        val_steps = sorted(m.step for m in client.get_metric_history(run_id, "val_loss"))
        assert val_steps == [0, 3, 6]
        samples = client.get_metric_history(run_id, "memory_rss_mb")
        assert len(samples) >= 2 and all(s.value > 0 for s in samples)
        assert run.data.metrics["peak_rss_mb"] >= max(s.value for s in samples) * 0.99
        assert run.data.metrics["optimizer_state_bytes"] > 0
        assert {"final_val_loss", "perplexity", "answer_accuracy"} <= set(run.data.metrics)
        artifacts = {Path(a.path).name for a in client.list_artifacts(run_id, "model")}
        assert {"model.safetensors", "config.json", "tokenizer.json"} <= artifacts
        assert run.data.params["optimizer"] == method


def test_report_lists_every_method_and_is_logged_to_the_parent(finished_comparison):
    _, client, tmp = finished_comparison
    [parent] = parent_runs(client)
    table = (tmp / "results" / TABLE).read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "FINISHED" in line]
    assert sorted(row.split("|")[1].strip() for row in rows) == ["adamw", "blockllm", "galore"]
    assert (tmp / "results" / LOSS_PLOT).stat().st_size > 1000
    assert (tmp / "results" / MEMORY_PLOT).stat().st_size > 1000
    logged = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {TABLE, LOSS_PLOT, MEMORY_PLOT} <= logged
    inputs = client.get_run(parent.info.run_id).inputs.dataset_inputs
    assert inputs, "the tokenized dataset is logged as an input of the parent run"


def test_a_diverging_method_fails_alone_with_its_reason(prefect_server, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(ComparisonIncomplete, match="galore"):
        compare_optimizers(CompareConfig(
            methods=["adamw", "galore"], max_steps=4, output_dir=str(tmp_path / "results"), tracking_uri=uri,
            method_args={"galore": {"lr": 1e6}}, retries=0, **MICRO,
        ))
    client = MlflowClient(uri)
    [parent] = parent_runs(client)
    children = child_runs(client, parent.info.run_id)
    assert children["adamw"].info.status == "FINISHED"
    assert children["galore"].info.status == "FAILED"
    assert "NonFiniteLoss" in children["galore"].data.tags["memopt.failure_reason"]
    table = (tmp_path / "results" / TABLE).read_text()
    assert "FAILED: " in table and "NonFiniteLoss" in table


@pytest.mark.parametrize(
    "args, message",
    [
        (["--methods", "adamw,nope"], "unknown method 'nope'"),
        (["--methods", "adamw,adamw"], "more than once"),
        (["--methods", ""], "--methods: empty"),
        (["--batch_size", "0"], "--batch_size: got 0"),
        (["--lr", "-1"], "--lr: got -1; must be a number > 0"),
        (["--sparsity", "1.5"], "--sparsity: got 1.5"),
        (["--rank", "0"], "--rank: got 0"),
        (["--model_name", "llama-micro", "--rank", "999"], "rank"),
        (["--dataset", "/no/such/file.jsonl"], "--dataset"),
        (["--seq_len", "4096"], "allows at most 1024"),
        (["--model_name", "/no/such/model"], "--model_name"),
        (["--output_dir", "{tmp}/a-file/results"], "--output_dir"),
        (["--tracking_uri", "http://127.0.0.1:9"], "does not answer"),
        (["--tracking_uri", "sqlite:///{tmp}/no/such/folder/mlflow.db"], "does not exist or cannot be written"),
        (["--tracking_uri", "file:///{tmp}/mlruns"], "the file store is retired"),
        # Not numbers: argparse's own message would be a usage dump and "invalid int value".
        (["--batch_size", "eight"], "--batch_size: got 'eight'; must be an integer"),
        (["--max_steps", "1.5"], "--max_steps: got '1.5'; must be an integer"),
        (["--lr", "fast"], "--lr: got 'fast'; must be a number"),
        (["--sparsity", "lots"], "--sparsity: got 'lots'; must be a number"),
        (["--no_such_option", "1"], "unrecognized arguments: --no_such_option"),
        # Out of range.
        (["--epochs", "0"], "--epochs: got 0; must be an integer >= 1"),
        (["--max_steps", "-1"], "--max_steps: got -1; must be an integer >= 0"),
        (["--eval_every", "0"], "--eval_every: got 0; must be an integer >= 1"),
        (["--checkpoint_every", "-3"], "--checkpoint_every: got -3"),
        (["--retries", "-1"], "--retries: got -1"),
        (["--seed", "-1"], "--seed: got -1"),
        (["--lr", "nan"], "--lr: got nan"),
        # Method hyperparameters: unknown, out of range, of the wrong type.
        (["--methods", "galore", "--method_args", "galore.no_such=1"], "no hyperparameter 'no_such'"),
        (["--methods", "galore", "--method_args", "galore.update_proj_gap=0"], "update_proj_gap"),
        (["--methods", "adamw", "--method_args", "adamw.eps='tiny'"], "--methods adamw: invalid eps: 'tiny'; valid: eps >= 0"),
        (["--methods", "adamw", "--method_args", "adamw.betas=(0.9,0.999,0.5)"], "--methods adamw: invalid betas"),
        (["--method_args", "galore"], "'galore' is not METHOD.NAME=VALUE"),
        (["--methods", "adamw", "--method_args", "galore.rank=4"], "--method_args: galore not among --methods"),
        # Data and model that cannot be used.
        (["--dataset", "{tmp}/numbers.jsonl"], "has no usable text field"),
        (["--dataset", "{tmp}/empty.jsonl"], "is empty"),
        # `datasets` itself fails on an empty save_to_disk folder ("list index out of range"): still one line.
        (["--dataset", "{tmp}/empty-dataset"], "empty-dataset': cannot read it"),
        (["--model_name", "{tmp}/broken-model"], "--model_name: cannot load a model config from"),
        # Where things go.
        (["--output_dir", "/proc/memopt-results"], "--output_dir: '/proc/memopt-results' cannot be written"),
        (["--resume", "0123456789abcdef"], "--resume: cannot read parent run '0123456789abcdef'"),
    ],
)
def test_bad_input_is_one_clear_error_and_nothing_starts(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("a file, not a folder")
    (tmp_path / "numbers.jsonl").write_text('{"a": 1, "b": 2.5}\n' * 50)
    (tmp_path / "empty.jsonl").write_text("")
    if "{tmp}/empty-dataset" in args:
        from datasets import Dataset

        Dataset.from_dict({"text": []}).save_to_disk(str(tmp_path / "empty-dataset"))
    if "{tmp}/broken-model" in args:
        from transformers import LlamaConfig

        LlamaConfig(hidden_size=8, num_attention_heads=2, num_key_value_heads=2, num_hidden_layers=1).save_pretrained(tmp_path / "broken-model")
        config = tmp_path / "broken-model" / "config.json"
        config.write_text(config.read_text()[:40])  # cut short: not JSON any more
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    defaults = ["--tracking_uri", f"sqlite:///{tmp_path}/mlflow.db", "--output_dir", str(tmp_path / "results")]
    before = set(tmp_path.iterdir())
    assert main([*defaults, *args]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err and "usage:" not in err, err
    assert set(tmp_path.iterdir()) == before, "no store, no results folder, nothing else"
