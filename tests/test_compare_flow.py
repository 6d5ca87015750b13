"""The comparison end to end: a real Prefect run, a real sqlite MLflow store, real training processes."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from flows.compare import ComparisonIncomplete, compare_optimizers, main
from memopt.config import CompareConfig
from memopt.report import HTML, LOSS_PLOT, LR_PLOT, MEMORY_PLOT, TABLE, write_report
from memopt.report.report_test import PageParser
from memopt.tracking import child_runs, open_comparison
from memopt.vocabulary import MemoryPart, Metric, Tag
from tasks.report import RESULTS_TABLE

MICRO = {"model_name": "llama-micro", "batch_size": 4, "seq_len": 32, "eval_every": 3, "checkpoint_every": 3}
REGISTERED = "memopt-best"


def parent_runs(client: MlflowClient):
    experiment = client.get_experiment_by_name("memopt")
    return client.search_runs([experiment.experiment_id], filter_string="tags.`mlflow.parentRunId` IS NULL")


@pytest.fixture(scope="module")
def finished_comparison(prefect_server, tmp_path_factory):
    """One small comparison of every pipeline method the flow's default runs, shared by the assertions below."""
    tmp = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{tmp}/mlflow.db"
    statuses = compare_optimizers(CompareConfig(
        methods=["adamw", "galore", "blockllm"], max_steps=6, output_dir=str(tmp / "results"), tracking_uri=uri,
        register_model_name=REGISTERED, **MICRO
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
        assert {"final_val_loss", "final_val_perplexity", "answer_accuracy"} <= set(run.data.metrics)
        assert run.data.params["optimizer"] == method


def test_every_method_model_loads_through_mlflow_and_generates(finished_comparison):
    import mlflow.transformers

    _, client, tmp = finished_comparison
    [parent] = parent_runs(client)
    mlflow.set_tracking_uri(str(client.tracking_uri))
    for method, run in child_runs(client, parent.info.run_id).items():
        generate = mlflow.transformers.load_model(f"runs:/{run.info.run_id}/model", dst_path=str(tmp / "loaded" / method))
        prompt = "Problem: 1 + 1 ="
        [out] = generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        assert out["generated_text"].startswith(prompt) and len(out["generated_text"]) > len(prompt), (method, out)
        # the logged model belongs to its run and knows the dataset its final loss was measured on
        [output] = client.get_run(run.info.run_id).outputs.model_outputs
        model = client.get_logged_model(output.model_id)
        assert model.source_run_id == run.info.run_id
        [final] = [m for m in model.metrics if m.key == "final_val_loss"]
        assert final.dataset_digest and "validation" in final.dataset_name
        assert client.get_run(run.info.run_id).inputs.dataset_inputs, "the child run names its datasets"


def test_the_best_method_model_is_registered_under_the_given_name(finished_comparison, tmp_path):
    _, client, _ = finished_comparison
    [parent] = parent_runs(client)
    children = child_runs(client, parent.info.run_id)
    best = min(children.values(), key=lambda r: r.data.metrics["final_val_loss"])
    [version] = client.search_model_versions(f"name = '{REGISTERED}'")
    assert version.run_id == best.info.run_id
    [output] = client.get_run(best.info.run_id).outputs.model_outputs
    assert version.source == client.get_logged_model(output.model_id).artifact_location
    import mlflow.transformers

    mlflow.set_tracking_uri(str(client.tracking_uri))
    generate = mlflow.transformers.load_model(f"models:/{REGISTERED}/1", dst_path=str(tmp_path))
    assert generate("Problem:", max_new_tokens=4, min_new_tokens=4, do_sample=False)[0]["generated_text"]


def test_memory_breakdown_is_logged_beside_each_formula(finished_comparison):
    _, client, _ = finished_comparison
    [parent] = parent_runs(client)
    for method, run in child_runs(client, parent.info.run_id).items():
        metrics = run.data.metrics
        [measured_at] = client.get_metric_history(run.info.run_id, Metric.STEP_PEAK_MB)
        assert measured_at.step == 2, method
        for part in (MemoryPart.WEIGHTS, MemoryPart.GRADIENTS, MemoryPart.OPTIMIZER_STATE):
            assert metrics[Metric.memory_part(part)] == pytest.approx(metrics[Metric.memory_part(part, estimate=True)],
                                                                       rel=0.01), (method, part)
        assert metrics[Metric.memory_part(MemoryPart.ACTIVATIONS)] > 0
        if method != "blockllm":  # frozen tensors: no activation formula
            assert metrics[Metric.memory_part(MemoryPart.ACTIVATIONS)] == metrics[
                Metric.memory_part(MemoryPart.ACTIVATIONS, estimate=True)]
        parts = sum(metrics[Metric.memory_part(p)] for p in MemoryPart)
        assert metrics[Metric.STEP_PEAK_MB] == pytest.approx(metrics[Metric.RUNTIME_MB] + parts + metrics[Metric.REST_MB])
        assert metrics[Metric.STEP_PEAK_MB] <= metrics["peak_rss_mb"] + 0.01


def test_the_reports_numbers_agree_with_the_runs(finished_comparison):
    """One Tokens/s, the lr that was used, a peak no lower than any sample (issue 16's disagreements)."""
    _, client, tmp = finished_comparison
    [parent] = parent_runs(client)
    table = (tmp / "results" / TABLE).read_text()
    first = table[table.index("\n| "):].strip().split("\n\n")[0]
    header, _, *rows = [[c.strip() for c in line.split("|")[1:-1]] for line in first.splitlines()]
    rows = {row[0]: dict(zip(header, row)) for row in rows}
    for method, run in child_runs(client, parent.info.run_id).items():
        run_id, row = run.info.run_id, rows[method]
        step_times = [m.value for m in client.get_metric_history(run_id, "step_time_s")]
        tokens = 6 * 4 * 32
        assert run.data.metrics["tokens_per_s"] == pytest.approx(tokens / sum(step_times))
        assert row["Tokens/s"] == f"{run.data.metrics['tokens_per_s']:.0f}"
        assert float(row["LR"]) == pytest.approx(float(run.data.params["lr"]), rel=1e-3)
        assert row["Epoch Time (s)"].endswith("(estimate)"), "6 steps are less than an epoch"
        samples = [m.value for m in client.get_metric_history(run_id, "memory_rss_mb")]
        peak = run.data.metrics["peak_rss_mb"]
        assert max(samples) * 0.99 <= peak and row["Peak Memory (MB)"] == f"{peak:.0f}"
        # the process's own peak: not the flow process's, which started it (ru_maxrss would carry that over)
        assert peak < max(samples) + 100, (method, peak, max(samples))
    assert "Answer Accuracy" not in header and "is 0 for every method here" in table


def test_report_lists_every_method_and_is_logged_to_the_parent(finished_comparison):
    _, client, tmp = finished_comparison
    [parent] = parent_runs(client)
    table = (tmp / "results" / TABLE).read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "FINISHED" in line]
    assert sorted(row.split("|")[1].strip() for row in rows) == ["adamw", "blockllm", "galore"]
    assert (tmp / "results" / LOSS_PLOT).stat().st_size > 1000
    assert (tmp / "results" / MEMORY_PLOT).stat().st_size > 1000
    logged = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {TABLE, HTML, LOSS_PLOT, MEMORY_PLOT} <= logged
    pngs = sorted(p.name for p in (tmp / "results").glob("*.png"))
    assert set(pngs) <= logged and len(pngs) >= 5
    inputs = client.get_run(parent.info.run_id).inputs.dataset_inputs
    assert inputs, "the tokenized dataset is logged as an input of the parent run"
    mlflow.set_tracking_uri(str(client.tracking_uri))  # load_table searches the runs through the fluent API's store
    results = client.load_table(parent.info.experiment_id, RESULTS_TABLE, run_ids=[parent.info.run_id])
    assert sorted(results["method"]) == ["adamw", "blockllm", "galore"]


def test_html_report_has_every_method_every_plot_inside_and_no_url(finished_comparison):
    _, client, tmp = finished_comparison
    page = (tmp / "results" / HTML).read_text()
    parser = PageParser()
    parser.feed(page)
    assert {"adamw", "galore", "blockllm"} <= set(parser.cells)
    pngs = sorted((tmp / "results").glob("*.png"))
    embedded = {src.removeprefix("data:image/png;base64,") for src in parser.images}
    assert embedded == {base64.b64encode(p.read_bytes()).decode() for p in pngs}, "every plot, each inside the page"
    assert parser.urls == [] and "http://" not in page and "https://" not in page


def test_sweep_and_seed_plots_are_drawn_only_when_given_data(finished_comparison, tmp_path):
    """The lr-sensitivity plot and the Pareto error bars take plain numbers (issue 12's sweep and seeds feed
    them): absent from the default report, present when data is given."""
    _, client, tmp = finished_comparison
    [parent] = parent_runs(client)
    assert not (tmp / "results" / LR_PLOT).exists()
    report = write_report(str(client.tracking_uri), parent.info.run_id, tmp_path,
                          lr_trials={"adamw": [(1e-3, 6.6), (3e-3, 6.4)], "galore": [(1e-2, 5.7), (3e-2, None)]},
                          seed_losses={"adamw": [6.5, 6.52, 6.49]}, seed_peaks={"adamw": [700.0, 710.0, 705.0]})
    assert tmp_path / LR_PLOT in report.files
    parser = PageParser()
    parser.feed((tmp_path / HTML).read_text())
    assert len(parser.images) == len(list(tmp_path.glob("*.png"))) == 6


def test_prefect_artifacts_hold_the_table_and_link_to_the_parent_run(finished_comparison):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    _, client, _ = finished_comparison
    [parent] = parent_runs(client)
    flow_run = parent.data.tags["memopt.prefect_flow_run_id"]
    with get_client(sync_client=True) as prefect:
        artifacts = prefect.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run])))
    by_key = {a.key: a for a in artifacts}
    url = f"/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}?workflowType=machine_learning"
    assert by_key["mlflow-parent-run"].data.endswith(f"{url})"), "a link: [text](url)"
    assert f"{url})" in by_key["optimizer-comparison"].data, "the Markdown artifact links to the parent run"
    table = by_key["optimizer-comparison-table"]
    assert table.type == "table"
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert sorted(row["method"] for row in rows) == ["adamw", "blockllm", "galore"]


def test_the_mlflow_ui_shows_the_comparison_whole(finished_comparison):
    """The parent: named after the comparison, in the memopt experiment, each method's numbers as METHOD.KEY, its
    params the values given (nothing unset as None or ''), MLflow's own source tags. Each child: the values it used
    (its lr, not None), its train_config.json, its own plots and its dataset, the same source tags."""
    _, client, _ = finished_comparison
    [parent] = parent_runs(client)
    assert parent.info.run_name == "adamw, galore, blockllm on llama-micro"
    children = child_runs(client, parent.info.run_id)
    for method, run in children.items():
        for key in ("final_val_loss", "final_val_perplexity", "answer_accuracy", "peak_rss_mb", "train_loss"):
            assert parent.data.metrics[f"{method}.{key}"] == run.data.metrics[key], (method, key)
        assert float(run.data.params["lr"]) == {"adamw": 1e-3, "galore": 1e-2, "blockllm": 1e-3}[method]
        assert "hp.lr" not in run.data.params, "lr once"
        assert run.data.params["warmup_steps"] == "0"  # 10% of 6 steps
        assert {"train_config.json", "plots"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "plots")} == {LOSS_PLOT, MEMORY_PLOT}
        assert {i.dataset.digest for i in run.inputs.dataset_inputs} == {i.dataset.digest for i in parent.inputs.dataset_inputs}
        assert len(run.inputs.dataset_inputs) == 2  # train and validation, once each
        assert f"/runs/{parent.info.run_id}?workflowType=machine_learning)" in run.data.tags["mlflow.note.content"]
    for run in (parent, *children.values()):
        values = {k: v for k, v in run.data.params.items()}
        assert not [k for k, v in values.items() if v in ("", "None", "{}")], values
        tags = run.data.tags
        assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"].endswith("flows/compare.py")
        assert len(tags["mlflow.source.git.commit"]) == 40
    assert "perplexity" not in children["adamw"].data.metrics and "best_val_loss" not in children["adamw"].data.metrics
    assert "lr" not in parent.data.params and parent.data.params["experiment"] == "memopt"
    # MLflow 3's UI shows an experiment of this kind as runs, not as GenAI traces
    assert client.get_experiment(parent.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_prefect_ui_shows_progress_links_and_tags(finished_comparison):
    """Stable task names; the flow run tagged with the methods and the model; each method's progress in the log and
    in a progress artifact that reached 100%; every run's MLflow address in the log; the report links the parent."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId

    _, client, _ = finished_comparison
    [parent] = parent_runs(client)
    flow_run_id = parent.data.tags["memopt.prefect_flow_run_id"]
    with get_client(sync_client=True) as prefect:
        flow_run = prefect.read_flow_run(flow_run_id)
        task_runs = prefect.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
        logs = [log.message for log in prefect.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))]
        artifacts = prefect.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])))
    assert set(flow_run.tags) >= {"method:adamw", "method:galore", "method:blockllm", "model:llama-micro"}
    assert sorted(r.name for r in task_runs) == sorted([
        "tokenize memopt/math-synthetic seq_len=32", *(f"{t}-{m}" for m in ("adamw", "galore", "blockllm") for t in ("train", "evaluate")),
        "compare"])
    experiment = parent.info.experiment_id
    ui = f"http://127.0.0.1:5000/#/experiments/{experiment}/runs"  # the UI's "Model training" workspace
    assert f"{ui}/{parent.info.run_id}?workflowType=machine_learning" in "\n".join(logs)
    progress = {a.key: a.data for a in artifacts if a.type == "progress"}
    assert progress == {f"{m}-progress": 100.0 for m in ("adamw", "galore", "blockllm")}
    for method, run in child_runs(client, parent.info.run_id).items():
        assert f"{method}: MLflow run {ui}/{run.info.run_id}?workflowType=machine_learning" in logs
        lines = [m for m in logs if m.startswith(f"{method}: step ")]
        assert lines[0].startswith(f"{method}: step 1/6 (17%), train_loss ") and "tokens/s" in lines[0]
        assert lines[-1].startswith(f"{method}: step 6/6 (100%)") and "val_loss" in lines[-1], lines
        assert f", {run.data.metrics['tokens_per_s']:.0f} tokens/s" in lines[-1], "one Tokens/s: the logged one"
    [report] = [a for a in artifacts if a.key == "optimizer-comparison"]
    assert f"]({ui}/{parent.info.run_id}?workflowType=machine_learning)" in report.description
    assert "| adamw | FINISHED |" in report.data


def test_the_run_mlflow_run_made_is_the_parent_in_the_comparisons_experiment_else_a_pointer(tracking_uri):
    """`mlflow run .` without --experiment-name makes its run in "Default": the comparison goes to its own
    experiment all the same, and that run points at it. With the experiment's name (make run), it is the parent."""
    client = MlflowClient(tracking_uri)
    cfg = CompareConfig(methods=["adamw"], model_name="llama-micro", tracking_uri=tracking_uri)
    in_default = client.create_run("0").info.run_id
    parent = client.get_run(open_comparison(client, cfg, in_default))
    assert parent.info.run_id != in_default and parent.info.run_name == "adamw on llama-micro"
    assert client.get_experiment(parent.info.experiment_id).name == "memopt"
    pointer = client.get_run(in_default)
    assert pointer.data.tags[Tag.COMPARISON_PARENT] == parent.info.run_id and pointer.info.run_name == "→ adamw on llama-micro"
    assert f"/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}?" in pointer.data.tags[Tag.DESCRIPTION]
    in_memopt = client.create_run(parent.info.experiment_id).info.run_id
    assert open_comparison(client, cfg, in_memopt) == in_memopt
    assert client.get_run(in_memopt).info.run_name == "adamw on llama-micro"
    assert Tag.COMPARISON_PARENT not in client.get_run(in_memopt).data.tags
    elsewhere = client.get_run(open_comparison(client, CompareConfig(methods=["adamw"], experiment="mine"), None))
    assert client.get_experiment(elsewhere.info.experiment_id).name == "mine"


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


def test_a_rewritten_report_replaces_the_results_table_rather_than_appending(tracking_uri):
    """A resumed comparison writes its report again: MLflow's log_table alone would append a second set of rows."""
    from memopt.report import Report
    from memopt.report.gather import Comparison, MethodResult
    from tasks.report import log_results_table

    client = MlflowClient(tracking_uri)
    run = client.create_run(client.create_experiment("t")).info.run_id

    def report(*statuses: str) -> Report:
        results = [MethodResult(m, s, "") for m, s in zip(("adamw", "galore"), statuses)]
        return Report(Comparison(run, "1", tracking_uri, 0, {}, {}, results), None, [])

    log_results_table(client, run, report("FINISHED", "FAILED"))
    log_results_table(client, run, report("FINISHED", "FINISHED"))
    mlflow.set_tracking_uri(tracking_uri)  # load_table searches the runs through the fluent API's store
    table = client.load_table(client.get_run(run).info.experiment_id, RESULTS_TABLE, run_ids=[run])
    assert list(table["method"]) == ["adamw", "galore"] and list(table["status"]) == ["FINISHED", "FINISHED"]
    assert RESULTS_TABLE in client.get_run(run).data.tags["mlflow.loggedArtifacts"], "MLflow knows it as a table"
