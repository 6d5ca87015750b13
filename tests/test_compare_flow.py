"""The comparison end to end: a real Prefect run, a real sqlite MLflow store, real training processes.

One module fixture carries most tests: a fair comparison in the finetune regime on llama-micro (a base
model pretrained first), adamw swept over 3 learning rates and blockllm over its own 2, two trials at a
time, each method then trained with 2 seeds. Its flow process is killed during adamw's sweep (its first two
trials finished, the third training), then `--resume PARENT` finishes it; the tests read the finished
comparison back from MLflow and the output folder.
"""
from __future__ import annotations

import base64
import json
import os
import signal
import statistics
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from mlflow import MlflowClient

from tests.flowtools import cli_environment, history, kill_group, report_rows, start_flow, wait_for
from flows.compare import ComparisonIncomplete, compare_optimizers, main
from memopt.config import CompareConfig
from memopt.report import HTML, LOSS_PLOT, LR_PLOT, MEMORY_PLOT, TABLE, write_report
from memopt.report.report_test import PageParser
from memopt.sweep import grid_edge
from memopt.tracking import child_runs, nested_runs, open_comparison, run_model_id, seed_runs, throughput, trial_runs
from memopt.vocabulary import MemoryPart, Metric, Role, Tag
from tasks.report import RESULTS_TABLE

MICRO = {"model_name": "llama-micro", "batch_size": 4, "seq_len": 32, "eval_every": 3, "checkpoint_every": 3}
REGISTERED = "memopt-best"
STEPS, SWEEP_STEPS, BASE_STEPS, SEEDS = 6, 4, 4, [0, 1]
GRIDS = {"adamw": [1e-3, 3e-3, 1e-2], "blockllm": [1e-3, 1e-2]}
FAIR = ["--model_name", "llama-micro", "--batch_size", "4", "--seq_len", "32", "--eval_every", "3",
        "--checkpoint_every", "2", "--max_steps", str(STEPS), "--sweep_steps", str(SWEEP_STEPS), "--base_steps", str(BASE_STEPS),
        "--lr_grid", ",".join(map(str, GRIDS["adamw"])), "--method_lr_grid", "blockllm=[1e-3,1e-2]", "--sweep_workers", "2",
        "--seeds", ",".join(map(str, SEEDS)), "--methods", "adamw,blockllm", "--retries", "0"]
FIRST_ROUND = ("0.001", "0.003")  # adamw's trials that train together and finish before the kill
METHODS = ["adamw", "blockllm"]


def parent_runs(client: MlflowClient):
    experiment = client.get_experiment_by_name("memopt")
    return client.search_runs([experiment.experiment_id], filter_string="tags.`mlflow.parentRunId` IS NULL")


def task_run_names(flow_run_id: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as prefect:
        runs = prefect.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(flow_run_id)])),
                                      sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=100)
    return [(r.name, r.state.name) for r in runs]


@pytest.fixture(scope="module")
def fair(prefect_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fair")
    env = cli_environment(tmp_path_factory)
    uri, out = f"sqlite:///{tmp}/mlflow.db", tmp / "results"
    first_log = tmp / "first.log"
    proc = start_flow([*FAIR, "--output_dir", str(out), "--tracking_uri", uri], tmp, env, first_log)
    try:  # kill the flow once adamw's first round of trials is done and the third trial is training
        third = wait_for(lambda: next(out.glob("runs/*/adamw/trial-lr0.01/checkpoints/latest"), None), proc, first_log,
                         "the third trial's first checkpoint", timeout=1800)  # the base model and the sweep's first round first
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        kill_group(proc)
    parent = third.parents[3].name
    client = MlflowClient(uri)
    before = {t.data.tags[Tag.TRIAL_LR]: t for t in trial_runs(client, child_runs(client, parent)["adamw"].info.run_id)}
    dirs = {lr: out / "runs" / parent / "adamw" / f"trial-lr{lr}" for lr in FIRST_ROUND}
    config_mtimes = {lr: (folder / "train_config.json").stat().st_mtime_ns for lr, folder in dirs.items()}
    resume_log = tmp / "resume.log"
    rc = subprocess.run([sys.executable, "-m", "flows.compare", "--resume", parent, "--tracking_uri", uri], cwd=tmp, env=env,
                        stdout=resume_log.open("w"), stderr=subprocess.STDOUT, timeout=1800).returncode
    return SimpleNamespace(tmp=tmp, uri=uri, out=out, client=client, parent=parent, rc=rc, log=resume_log, env=env,
                           trials_before=before, trial_dirs=dirs, config_mtimes=config_mtimes)


@pytest.fixture(scope="module")
def finished_comparison(prefect_server, tmp_path_factory):
    """The report's comparison: the default run's methods in the pretrain regime without a sweep (one seed run
    under each method's run), the best model registered; shared by the report's assertions below."""
    tmp = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{tmp}/mlflow.db"
    statuses = compare_optimizers(CompareConfig(
        methods=["adamw", "galore", "blockllm"], max_steps=6, output_dir=str(tmp / "results"), tracking_uri=uri,
        register_model_name=REGISTERED, regime="pretrain", sweep_steps=0, **MICRO
    ))
    assert statuses == {"adamw": "FINISHED", "galore": "FINISHED", "blockllm": "FINISHED"}
    return statuses, MlflowClient(uri), tmp


def trained_runs(client: MlflowClient, parent_run_id: str) -> dict:
    """{method: its (one) seed run}: the training process's own run, with its histories and its model."""
    return {method: seed_runs(client, run.info.run_id)[0] for method, run in child_runs(client, parent_run_id).items()}


def test_every_method_finishes_with_its_trials_and_seeds_nested_under_it(fair):
    client = fair.client
    assert fair.rc == 0, fair.log.read_text()[-3000:]
    assert client.get_run(fair.parent).info.status == "FINISHED"
    children = child_runs(client, fair.parent)
    assert sorted(children) == METHODS
    for method, run in children.items():
        assert run.info.status == "FINISHED" and run.data.tags[Tag.ROLE] == Role.METHOD
        trials, seeds = trial_runs(client, run.info.run_id), seed_runs(client, run.info.run_id)
        assert [float(t.data.tags[Tag.TRIAL_LR]) for t in trials] == GRIDS[method], "one run per lr, a resume included"
        assert [int(r.data.tags[Tag.SEED]) for r in seeds] == SEEDS, "one run per seed"
        for nested in (*trials, *seeds):
            assert nested.info.status == "FINISHED" and nested.data.tags[Tag.PARENT] == run.info.run_id
            assert nested.data.tags[Tag.METHOD] == method
        assert {t.data.params["max_steps"] for t in trials} == {str(SWEEP_STEPS)}
        assert {r.data.params["max_steps"] for r in seeds} == {str(STEPS)}


def test_the_sweep_picks_the_best_trial_and_the_seeds_train_at_its_lr(fair):
    client = fair.client
    for method, run in child_runs(client, fair.parent).items():
        losses = {float(t.data.tags[Tag.TRIAL_LR]): t.data.metrics["val_loss"] for t in trial_runs(client, run.info.run_id)}
        best = min(losses, key=losses.get)
        assert float(run.data.params["chosen_lr"]) == best, (method, losses)
        assert run.data.params["lr_source"] == "sweep"
        assert run.data.params["lr_grid"] == ",".join(f"{lr:g}" for lr in GRIDS[method])
        assert run.data.tags.get(Tag.LR_ON_EDGE, "") == grid_edge(GRIDS[method], best)
        for seed in seed_runs(client, run.info.run_id):
            assert float(seed.data.params["lr"]) == best and seed.data.params["seed"] == seed.data.tags[Tag.SEED]


def test_an_interrupted_sweep_resumes_without_rerunning_finished_trials(fair):
    client = fair.client
    after = {t.data.tags[Tag.TRIAL_LR]: t for t in trial_runs(client, child_runs(client, fair.parent)["adamw"].info.run_id)}
    assert fair.trials_before["0.01"].info.status == "RUNNING", "the flow was killed during the sweep"
    for lr in FIRST_ROUND:
        before = fair.trials_before[lr]
        assert before.info.status == "FINISHED", "the first round had finished when the flow was killed"
        assert after[lr].info.run_id == before.info.run_id
        assert after[lr].info.end_time == before.info.end_time, "the finished trial was left alone"
        assert (fair.trial_dirs[lr] / "train_config.json").stat().st_mtime_ns == fair.config_mtimes[lr], "no process for it"
    assert after["0.01"].info.run_id == fair.trials_before["0.01"].info.run_id, "the killed trial finished in its own run"
    resumed_flow = client.get_run(fair.parent).data.tags[Tag.PREFECT_FLOW_RUN]
    names = dict(task_run_names(resumed_flow))
    assert not {"trial-adamw-lr0.001", "trial-adamw-lr0.003"} & set(names) and names["trial-adamw-lr0.01"] == "Completed", names
    assert names["base-model llama-micro"] == "Cached", "the base model was made once, by the first attempt"
    for trial in after.values():
        assert sorted(history(client, trial.info.run_id, "train_loss")) == list(range(1, SWEEP_STEPS + 1))
        assert sorted(history(client, trial.info.run_id, "val_loss")) == [3, SWEEP_STEPS], "no step-0 loss: the seeds' own"


def test_the_method_run_carries_its_seeds_statistics(fair):
    client = fair.client
    for method, run in child_runs(client, fair.parent).items():
        seeds = seed_runs(client, run.info.run_id)
        m = run.data.metrics
        losses = [r.data.metrics["final_val_loss"] for r in seeds]
        assert m["final_val_loss"] == pytest.approx(statistics.fmean(losses))
        assert m["final_val_loss_std"] == pytest.approx(statistics.stdev(losses))
        assert (m["final_val_loss_min"], m["final_val_loss_max"]) == (min(losses), max(losses))
        speeds = [throughput(client, r) for r in seeds]
        assert m["tokens_per_s"] == pytest.approx(statistics.fmean(speeds))
        assert m["tokens_per_s_std"] == pytest.approx(statistics.stdev(speeds))
        peaks = [r.data.metrics["peak_rss_mb"] for r in seeds]
        assert (m["peak_rss_mb"], m["peak_rss_mb_min"], m["peak_rss_mb_max"]) == pytest.approx(
            (statistics.fmean(peaks), min(peaks), max(peaks)))
        assert run.data.params["seeds"] == "0,1"


def test_each_seed_run_has_every_step_memory_samples_and_the_model(fair):
    client = fair.client
    for method, run in child_runs(client, fair.parent).items():
        for seed in seed_runs(client, run.info.run_id):
            run_id = seed.info.run_id
            for key in ("train_loss", "lr", "grad_norm", "step_time_s", "tokens_per_s"):
                assert sorted(history(client, run_id, key)) == list(range(1, STEPS + 1)), (method, key)
            assert sorted(history(client, run_id, "val_loss")) == [0, 3, 6]
            samples = client.get_metric_history(run_id, "memory_rss_mb")
            assert len(samples) >= 2 and all(s.value > 0 for s in samples)
            assert seed.data.metrics["peak_rss_mb"] >= max(s.value for s in samples) * 0.99
            assert {"final_val_loss", "final_val_perplexity", "answer_accuracy", "optimizer_state_bytes"} <= set(seed.data.metrics)
            model_id = run_model_id(client, run_id)  # an MLflow LoggedModel of the transformers flavour
            assert {"model.safetensors", "config.json"} <= {Path(a.path).name for a in client.list_logged_model_artifacts(model_id, "model")}
            assert "tokenizer.json" in {Path(a.path).name for a in client.list_logged_model_artifacts(model_id, "components/tokenizer")}
            assert seed.data.params["optimizer"] == method


def test_the_finetune_regime_fine_tunes_a_base_model_made_once_and_logged(fair):
    import mlflow.transformers

    client = fair.client
    parent = client.get_run(fair.parent)
    assert parent.data.tags[Tag.REGIME] == "finetune"
    [base] = nested_runs(client, fair.parent, Role.BASE)
    assert base.info.status == "FINISHED" and base.data.params["optimizer"] == "adamw"
    assert base.data.params["max_steps"] == str(BASE_STEPS) and Tag.METHOD not in base.data.tags
    [base_dir] = (fair.out / "cache").glob("base-*")
    record = json.loads((base_dir / "base.json").read_text())
    assert record["run_id"] == base.info.run_id and parent.data.tags[Tag.BASE_MODEL] == record["model_dir"]
    model = client.get_logged_model(parent.data.tags[Tag.BASE_MODEL_ID])
    assert model.status.to_int() == model.status.READY.to_int() and model.source_run_id == base.info.run_id
    pipeline = mlflow.transformers.load_model(model.artifact_location)
    assert isinstance(pipeline("Problem:", max_new_tokens=3)[0]["generated_text"], str)
    inputs = {i.dataset.name for i in base.inputs.dataset_inputs}
    assert any("general-synthetic" in name for name in inputs), "the base run's data is the general corpus"
    for method, run in child_runs(client, fair.parent).items():
        assert run.data.tags[Tag.REGIME] == "finetune"
        for seed in seed_runs(client, run.info.run_id):
            assert seed.data.params["model_name"] == record["model_dir"] and seed.data.params["random_init"] == "False"
    tokenized = [json.loads(p.read_text()) for p in (fair.out / "cache").glob("tokenized-*/meta.json")]
    assert sorted(t["tokenizer"].startswith("bpe-") for t in tokenized) == [False, True], "the task data: the base's tokenizer"


def test_blockllm_takes_its_fine_tuning_defaults_in_the_finetune_regime(fair):
    for run in seed_runs(fair.client, child_runs(fair.client, fair.parent)["blockllm"].info.run_id):
        assert run.data.params["hp.frozen_patterns"] == "('embed', 'lm_head')"


def test_the_report_gives_the_sweep_and_the_seeds(fair):
    client = fair.client
    table = (fair.out / TABLE).read_text()
    assert sorted(report_rows(table.partition("## Learning-rate sweep")[0])) == METHODS
    sweep = table.partition("## Learning-rate sweep")[2].partition("## Seeds")[0]
    seeds = table.partition("## Seeds")[2]
    for method, run in child_runs(client, fair.parent).items():
        row = report_rows(sweep)[method]
        assert all(f"{lr:g}: " in row for lr in GRIDS[method]) and f"| {float(run.data.params['chosen_lr']):g} |" in row
        assert ("the best lr is the grid's" in row) == (Tag.LR_ON_EDGE in run.data.tags)
        row = report_rows(seeds)[method]
        assert "| 0,1 |" in row and " ± " in row
    assert "significant" in report_rows(seeds)["blockllm"]
    assert "sum of their standard deviations" in seeds
    assert (fair.out / LOSS_PLOT).stat().st_size > 1000 and (fair.out / MEMORY_PLOT).stat().st_size > 1000
    logged = {Path(a.path).name for a in client.list_artifacts(fair.parent, "report")}
    assert {TABLE, LOSS_PLOT, MEMORY_PLOT} <= logged
    assert client.get_run(fair.parent).inputs.dataset_inputs, "the tokenized dataset is an input of the parent run"


def test_every_method_model_loads_through_mlflow_and_generates(finished_comparison):
    import mlflow.transformers

    _, client, tmp = finished_comparison
    [parent] = parent_runs(client)
    mlflow.set_tracking_uri(str(client.tracking_uri))
    for method, run in trained_runs(client, parent.info.run_id).items():
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
        assert client.get_run(run.info.run_id).inputs.dataset_inputs, "the training run names its datasets"


def test_the_best_method_model_is_registered_under_the_given_name(finished_comparison, tmp_path):
    _, client, _ = finished_comparison
    [parent] = parent_runs(client)
    children = child_runs(client, parent.info.run_id)
    best = min(children, key=lambda m: children[m].data.metrics["final_val_loss"])
    trained = trained_runs(client, parent.info.run_id)[best]
    [version] = client.search_model_versions(f"name = '{REGISTERED}'")
    assert version.run_id == trained.info.run_id, "the best method's model: its first seed run's"
    [output] = client.get_run(trained.info.run_id).outputs.model_outputs
    assert version.source == client.get_logged_model(output.model_id).artifact_location
    import mlflow.transformers

    mlflow.set_tracking_uri(str(client.tracking_uri))
    generate = mlflow.transformers.load_model(f"models:/{REGISTERED}/1", dst_path=str(tmp_path))
    assert generate("Problem:", max_new_tokens=4, min_new_tokens=4, do_sample=False)[0]["generated_text"]


def test_memory_breakdown_is_logged_beside_each_formula(finished_comparison):
    _, client, _ = finished_comparison
    [parent] = parent_runs(client)
    for method, run in trained_runs(client, parent.info.run_id).items():
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
    for method, run in trained_runs(client, parent.info.run_id).items():
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
    params the values given (nothing unset as None or ''), MLflow's own source tags. Each method's run: described,
    linking its parent. Each seed run: the values it used (its lr, not None), its train_config.json, its own plots
    and its dataset. Every run: the same source tags."""
    _, client, _ = finished_comparison
    [parent] = parent_runs(client)
    assert parent.info.run_name == "adamw, galore, blockllm on llama-micro"
    children, trained = child_runs(client, parent.info.run_id), trained_runs(client, parent.info.run_id)
    for method, run in children.items():
        for key in ("final_val_loss", "final_val_perplexity", "answer_accuracy", "peak_rss_mb", "train_loss"):
            assert parent.data.metrics[f"{method}.{key}"] == run.data.metrics[key], (method, key)
        assert f"/runs/{parent.info.run_id}?workflowType=machine_learning)" in run.data.tags["mlflow.note.content"]
        seed = trained[method]
        assert float(seed.data.params["lr"]) == {"adamw": 1e-3, "galore": 1e-2, "blockllm": 1e-3}[method]
        assert "hp.lr" not in seed.data.params, "lr once"
        assert seed.data.params["warmup_steps"] == "0"  # 10% of 6 steps
        assert {"train_config.json", "plots"} <= {a.path for a in client.list_artifacts(seed.info.run_id)}
        assert {Path(a.path).name for a in client.list_artifacts(seed.info.run_id, "plots")} == {LOSS_PLOT, MEMORY_PLOT}
        for nested in (run, seed):
            inputs = nested.inputs.dataset_inputs
            assert {i.dataset.digest for i in inputs} == {i.dataset.digest for i in parent.inputs.dataset_inputs}
            assert len(inputs) == 2  # train and validation, once each
    for run in (parent, *children.values(), *trained.values()):
        values = {k: v for k, v in run.data.params.items()}
        assert not [k for k, v in values.items() if v in ("", "None", "{}")], values
        tags = run.data.tags
        assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"].endswith("flows/compare.py")
        assert len(tags["mlflow.source.git.commit"]) == 40
    adamw = trained["adamw"].data.metrics
    assert "perplexity" not in adamw and "best_val_loss" not in adamw
    assert "lr" not in parent.data.params and parent.data.params["experiment"] == "memopt"
    # MLflow 3's UI shows an experiment of this kind as runs, not as GenAI traces
    assert client.get_experiment(parent.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_prefect_ui_shows_progress_links_and_tags(finished_comparison):
    """Stable task names; the flow run tagged with the methods, the model and the regime; each training's progress
    in the log and in a progress artifact that reached 100%; every run's MLflow address in the log; the report
    links the parent; the progress lines' tokens/s is the logged one."""
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
    methods = ("adamw", "galore", "blockllm")
    assert set(flow_run.tags) >= {*(f"method:{m}" for m in methods), "model:llama-micro", "regime:pretrain"}
    assert sorted(r.name for r in task_runs) == sorted([
        "tokenize memopt/math-synthetic seq_len=32", *(f"{t}-{m}-seed0" for m in methods for t in ("train", "evaluate")),
        "compare"])
    ui = f"http://127.0.0.1:5000/#/experiments/{parent.info.experiment_id}/runs"  # the UI's "Model training" workspace
    assert f"{ui}/{parent.info.run_id}?workflowType=machine_learning" in "\n".join(logs)
    progress = {a.key: a.data for a in artifacts if a.type == "progress"}
    assert progress == {f"train-{m}-seed0-progress": 100.0 for m in methods}
    trained = trained_runs(client, parent.info.run_id)
    for method, run in child_runs(client, parent.info.run_id).items():
        for nested in (run, trained[method]):
            assert f"{method}: MLflow run {ui}/{nested.info.run_id}?workflowType=machine_learning" in logs
        lines = [m for m in logs if m.startswith(f"{method}: step ")]
        assert lines[0].startswith(f"{method}: step 1/6 (17%), train_loss ") and "tokens/s" in lines[0]
        assert lines[-1].startswith(f"{method}: step 6/6 (100%)") and "val_loss" in lines[-1], lines
        assert f", {trained[method].data.metrics['tokens_per_s']:.0f} tokens/s" in lines[-1], "one Tokens/s: the logged one"
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

def test_a_diverging_method_fails_alone_and_a_later_comparison_reuses_the_base_model(fair, prefect_server, tmp_path):
    """Same base spec and output folder as the fixture's, another store: the base model is not trained again,
    only logged into this store; galore at lr 1e6 (given, so not swept) fails alone."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(ComparisonIncomplete, match="galore"):
        compare_optimizers(CompareConfig(
            methods=["adamw", "galore"], max_steps=4, output_dir=str(fair.out), tracking_uri=uri, base_steps=BASE_STEPS,
            method_args={"galore": {"lr": 1e6}}, retries=0, sweep_steps=0, **MICRO,
        ))
    client = MlflowClient(uri)
    [parent] = parent_runs(client)
    assert nested_runs(client, parent.info.run_id, Role.BASE) == [], "the base model came from the cache"
    assert parent.data.tags[Tag.BASE_MODEL] == fair.client.get_run(fair.parent).data.tags[Tag.BASE_MODEL]
    assert client.get_logged_model(parent.data.tags[Tag.BASE_MODEL_ID]).source_run_id == parent.info.run_id
    children = child_runs(client, parent.info.run_id)
    assert children["adamw"].info.status == "FINISHED"
    assert children["galore"].info.status == "FAILED"
    assert children["galore"].data.params["lr_source"] == "method_args"
    assert "NonFiniteLoss" in children["galore"].data.tags["memopt.failure_reason"]
    table = (fair.out / "runs" / parent.info.run_id / "report" / TABLE).read_text()
    assert "FAILED: " in table and "NonFiniteLoss" in table


def test_a_sweep_longer_than_an_epoch_budget_is_bad_input(prefect_server, tmp_path, capsys):
    """A budget in epochs is known only once the data is tokenized: the flow stops there, before any training."""
    args = ["--regime", "pretrain", "--methods", "adamw", "--sweep_steps", "100000", "--output_dir", str(tmp_path / "r"),
            "--tracking_uri", f"sqlite:///{tmp_path}/mlflow.db", *[str(x) for kv in MICRO.items() for x in (f"--{kv[0]}", kv[1])]]
    assert main(args) == 2
    [error] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert error.startswith("error: --sweep_steps: got 100000; must be smaller than the budget, 1 epoch(s)"), error
    [parent] = parent_runs(MlflowClient(f"sqlite:///{tmp_path}/mlflow.db"))
    assert parent.info.status == "FAILED" and child_runs(MlflowClient(f"sqlite:///{tmp_path}/mlflow.db"), parent.info.run_id) == {}


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
        # The sweep, the seeds and the regimes.
        (["--lr_grid", ""], "--lr_grid: empty; give at least one learning rate"),
        (["--lr_grid", "1e-3,nan"], "--lr_grid: got nan; every learning rate must be a positive finite number"),
        (["--lr_grid", "1e-3,-1e-2"], "--lr_grid: got -0.01; every learning rate must be a positive finite number"),
        (["--lr_grid", "1e-3,inf"], "--lr_grid: got inf"),
        (["--lr_grid", "1e-3,fast"], "--lr_grid: got 'fast'; must be a number"),
        (["--lr_grid", "1e-3,1e-3"], "--lr_grid: 0.001 given more than once"),
        (["--methods", "galore", "--method_lr_grid", "galore=[1e-3,0]"], "--method_lr_grid: galore: got 0"),
        (["--methods", "galore", "--method_lr_grid", "galore=[]"], "--method_lr_grid: galore: empty"),
        (["--methods", "adamw", "--method_lr_grid", "galore=[1e-3]"], "--method_lr_grid: galore not among --methods"),
        (["--seeds", "0,1,0"], "--seeds: 0 given more than once"),
        (["--seeds", "0,-1"], "--seeds: got -1"),
        (["--regime", "scratch"], "--regime: got 'scratch'; must be one of pretrain, finetune"),
        (["--max_steps", "20", "--sweep_steps", "20"], "--sweep_steps: got 20; must be smaller than the budget --max_steps 20"),
        (["--base_steps", "0"], "--base_steps: got 0; the finetune regime with the preset 'llama-9m'"),
        (["--base_dataset", "/no/such/corpus.jsonl"], "--base_dataset"),
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
