"""The compare task: read MLflow back, write the report, log it to the parent run and to Prefect."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from mlflow import MlflowClient
from prefect import task
from prefect.artifacts import create_markdown_artifact

from memopt.report import LOSS_PLOT, MEMORY_PLOT, TABLE, write_report


@task(name="compare", task_run_name="compare")
def compare(tracking_uri: str, parent_run_id: str, output_dir: str, parent_url: str = "") -> str:
    """Writes the report for this comparison under output_dir/runs/PARENT/report and copies it to output_dir.
    `parent_url`: the parent run in the MLflow UI, which the Prefect artifact links to."""
    out = Path(output_dir)
    own = out / "runs" / parent_run_id / "report"  # per comparison: two at once never cross
    table, _ = write_report(tracking_uri, parent_run_id, own)
    MlflowClient(tracking_uri).log_artifacts(parent_run_id, str(own), "report")
    for name in (TABLE, LOSS_PLOT, MEMORY_PLOT):  # the latest report at the documented place, replaced atomically
        tmp = out / f".{name}.{parent_run_id}"
        shutil.copyfile(own / name, tmp)
        os.replace(tmp, out / name)
    link = f"[MLflow parent run {parent_run_id}]({parent_url})" if parent_url else f"MLflow parent run {parent_run_id}"
    create_markdown_artifact(table.read_text(), key="optimizer-comparison", description=link)
    return str(out / TABLE)
