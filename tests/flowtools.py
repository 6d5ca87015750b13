"""Helpers for tests that run the flow's command line as a subprocess (real processes, killed from the test):
its environment and what its runs hold; starting, waiting and killing are tests/helpers.py's."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import ViewType

from memopt import checkpoint
from memopt.vocabulary import Tag
from tests.helpers import kill_group, start_flow, training_pids, wait_for  # noqa: F401 (for the flow tests)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def cli_environment(tmp_path_factory, **extra: str) -> dict[str, str]:
    """The environment of a flow subprocess: this checkout's code, the session's Prefect test server (the
    `prefect_server` fixture must be active), its own result storage, one thread per process."""
    from prefect.settings import PREFECT_API_URL

    return {
        **os.environ,
        **extra,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # `mlflow run` runs `python -m ...`: this venv's
        "PYTHONPATH": str(ROOT),
        "PREFECT_API_URL": PREFECT_API_URL.value(),  # the session's test server, not one per subprocess
        "PREFECT_LOCAL_STORAGE_PATH": str(tmp_path_factory.mktemp("prefect-storage")),  # cached results
        # A micro model on 2 shared cores: torch's default threads make generation ~18x slower here.
        "OMP_NUM_THREADS": "1",
    }


def resumable_step(ckpt_dir: Path) -> int:
    """The step a resume continues from: the newest step folder (0: none), which is the one `latest` names or newer.
    A kill between a checkpoint's rename into place and the update of `latest` leaves the newer one, and
    checkpoint.resume takes it; read it once the training process is gone."""
    steps = [int(p.name.removeprefix("step-")) for p in ckpt_dir.glob("step-*") if p.is_dir()]
    return max(steps, default=0)


def children_by_method(client: MlflowClient, parent: str) -> dict[str, list]:
    """Every child run of `parent` (not only the newest per method), to catch a second run for a method."""
    runs = client.search_runs([client.get_run(parent).info.experiment_id], f"tags.`{Tag.PARENT}` = '{parent}'",
                              run_view_type=ViewType.ALL)
    found: dict[str, list] = {}
    for run in runs:
        found.setdefault(run.data.tags[Tag.METHOD], []).append(run)
    return found


def history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    """{step: value}; fails if a step was logged twice."""
    metrics = client.get_metric_history(run_id, key)
    steps = [m.step for m in metrics]
    assert len(steps) == len(set(steps)), (key, sorted(steps))
    return {m.step: m.value for m in metrics}


def report_rows(table: str) -> dict[str, str]:
    """{method: row} of the first table of a report (the main one; the sections after it have their own)."""
    first = table.split("\n## ", 1)[0] if not table.startswith("## ") else table
    rows = [line.split("|") for line in first.splitlines() if line.startswith("| ")]
    return {cells[1].strip(): "|".join(cells) for cells in rows if cells[1].strip() not in ("Method", "")}


def seed_run(client: MlflowClient, parent: str, method: str, seed: int = 0):
    """The training run of `method`'s seed `seed` in the comparison `parent` (memopt/tracking.py's tree)."""
    from memopt.tracking import child_runs, seed_runs

    [run] = [r for r in seed_runs(client, child_runs(client, parent)[method].info.run_id) if r.data.tags[Tag.SEED] == str(seed)]
    return run
