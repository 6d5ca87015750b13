"""MLflow logging for the training process, off the training thread.

A synchronous MLflow call costs about 8 ms on sqlite here; one `log_batch` of
hundreds of metrics costs about the same. So metrics go into a queue and a
background thread sends them in batches. Logging is idempotent by step: on a
resume, every (key, step) already in the store is skipped, so each step's
metrics appear exactly once however often the process was killed.
"""
from __future__ import annotations

import fcntl
import os
import threading
import time
from collections import defaultdict
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch
MAX_PARAM_LENGTH = 6000


class RunLogger:
    """Logs to one existing MLflow run by id (MLflow's active run is per thread: never used here)."""

    def __init__(self, tracking_uri: str, run_id: str, flush_every_s: float = 2.0):
        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id
        self.flush_every_s = flush_every_s
        self._pending: list[Metric] = []
        self._lock = threading.Lock()  # guards _pending
        self._flush_lock = threading.Lock()  # one flush at a time: when flush() returns, all is written
        self._stop = threading.Event()
        self._logged_through = self._last_logged_steps()
        self._thread = threading.Thread(target=self._run, name="mlflow-logger", daemon=True)
        self._thread.start()

    def _last_logged_steps(self) -> dict[str, int]:
        run = self.client.get_run(self.run_id)
        last: dict[str, int] = defaultdict(lambda: -1)
        for key in run.data.metrics:
            history = self.client.get_metric_history(self.run_id, key)
            last[key] = max((m.step for m in history), default=-1)
        return last

    def already_logged(self, key: str, step: int) -> bool:
        return step <= self._logged_through[key]

    def metrics(self, values: dict[str, float], step: int, timestamp_ms: int | None = None) -> None:
        timestamp_ms = timestamp_ms or int(time.time() * 1000)
        fresh = [Metric(k, float(v), timestamp_ms, step) for k, v in values.items() if not self.already_logged(k, step)]
        with self._lock:
            self._pending.extend(fresh)

    def params(self, values: dict[str, object]) -> None:
        existing = self.client.get_run(self.run_id).data.params
        params = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in values.items() if k not in existing]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def tags(self, values: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in values.items()])

    def flush(self) -> None:
        """Send everything queued so far; the training loop calls it before each checkpoint."""
        with self._flush_lock:
            with self._lock:
                pending, self._pending = self._pending, []
            for i in range(0, len(pending), MAX_BATCH):
                self.client.log_batch(self.run_id, metrics=pending[i : i + MAX_BATCH])

    def _run(self) -> None:
        while not self._stop.wait(self.flush_every_s):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.flush()


# --- The store ---------------------------------------------------------------------------------

def ensure_store(tracking_uri: str) -> None:
    """Create (or upgrade) a sqlite store with one process at a time. MLflow creates the tables and runs
    its alembic migrations on first use without a lock of its own: two comparisons started together on a
    new `mlflow.db` otherwise fail with "table ... already exists". Once it exists, sqlite's own locking
    (MLflow sets a 20 s busy timeout) is enough for concurrent writers."""
    if not tracking_uri.startswith("sqlite:///"):
        return  # a tracking server serializes this itself
    folder = Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent
    fd = os.open(folder, os.O_RDONLY)  # the folder, not a lock file beside the store: nothing is left behind
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        MlflowClient(tracking_uri).search_experiments(max_results=1)  # opening the store creates/migrates it
    finally:
        os.close(fd)  # releases the lock


# --- Runs of a comparison: one parent, one child per method -------------------------------------

EXPERIMENT = "memopt"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests children under the parent
METHOD_TAG = "memopt.method"


def open_parent_run(client: MlflowClient, run_id: str | None, run_name: str | None = None) -> str:
    """The parent run: `run_id` when given (mlflow run's MLFLOW_RUN_ID, or --resume), else a new one."""
    if run_id:
        client.get_run(run_id)  # raises if it does not exist
        return run_id
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        try:
            experiment_id = client.create_experiment(EXPERIMENT)
        except MlflowException as exc:  # another comparison created it since we looked
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    return client.create_run(experiment_id, run_name=run_name).info.run_id


def child_runs(client: MlflowClient, parent_run_id: str) -> dict[str, "mlflow.entities.Run"]:
    """The method's newest child run under the parent, by method name."""
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=1000,
    )
    return {r.data.tags[METHOD_TAG]: r for r in runs if METHOD_TAG in r.data.tags}


def child_run(client: MlflowClient, parent_run_id: str, method: str) -> "mlflow.entities.Run":
    """The method's child run: the existing one (a retry or resume continues it) or a new one."""
    existing = child_runs(client, parent_run_id).get(method)
    if existing is not None:
        return existing
    parent = client.get_run(parent_run_id)
    return client.create_run(
        parent.info.experiment_id, run_name=method, tags={PARENT_TAG: parent_run_id, METHOD_TAG: method}
    )
