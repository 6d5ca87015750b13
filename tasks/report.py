"""The compare task: read MLflow back, write the report, log it to the parent run and to Prefect."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from memopt.report import TABLE, Report, write_report
from memopt.links import mlflow_ui, run_url
from memopt.tracking import register_model

RESULTS_TABLE = "comparison_results.json"  # one name in every parent run: MLflow compares it across comparisons


def log_results_table(client: MlflowClient, run_id: str, report: Report) -> None:
    """The rows through MLflow's `log_table`, once; a resumed comparison's report replaces them (log_table itself
    would append a second set), written the way log_table writes them."""
    rows = pd.DataFrame(report.records())
    if not any(a.path == RESULTS_TABLE for a in client.list_artifacts(run_id)):
        client.log_table(run_id, data=rows, artifact_file=RESULTS_TABLE)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / RESULTS_TABLE
        rows.to_json(path, orient="split", index=False, date_format="iso")
        client.log_artifact(run_id, str(path))


@task(name="compare", task_run_name="compare")
def compare(tracking_uri: str, parent_run_id: str, output_dir: str, parent_url: str = "",
            register_model_name: str = "") -> str:
    """Writes the report for this comparison under output_dir/runs/PARENT/report and copies it to output_dir;
    registers the best method's model under `register_model_name` when one is given. `parent_url`: the parent run
    in the MLflow UI, which the report and the Prefect artifacts link to (by default where `mlflow ui` serves it)."""
    out = Path(output_dir)
    own = out / "runs" / parent_run_id / "report"  # per comparison: two at once never cross
    client = MlflowClient(tracking_uri)
    url = parent_url or run_url(mlflow_ui(tracking_uri), client.get_run(parent_run_id).info.experiment_id, parent_run_id)
    report = write_report(tracking_uri, parent_run_id, own, run_link=f"[{parent_run_id}]({url})")
    client.log_artifacts(parent_run_id, str(own), "report")
    log_results_table(client, parent_run_id, report)
    for path in report.files:  # the latest report at the documented place, each file replaced atomically
        tmp = out / f".{path.name}.{parent_run_id}"
        shutil.copyfile(path, tmp)
        os.replace(tmp, out / path.name)
    description = f"[MLflow parent run {parent_run_id}]({url})"
    create_markdown_artifact(report.table.read_text(), key="optimizer-comparison", description=description)
    create_table_artifact(report.records(), key="optimizer-comparison-table", description=description)
    create_link_artifact(url, link_text=f"MLflow parent run {parent_run_id}", key="mlflow-parent-run")
    best = report.best()
    if register_model_name and best is not None:
        version = register_model(client, register_model_name, best.trained_run_id)
        get_run_logger().info("registered %s's model as %s version %s", best.method, register_model_name, version.version)
    return str(out / TABLE)
