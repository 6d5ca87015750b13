"""MLflow logging for the training process, off the training thread.

A synchronous MLflow call costs about 8 ms on sqlite here; one `log_batch` of
hundreds of metrics costs about the same. So metrics go into a queue and a
background thread sends them in batches. Logging is idempotent by step: on a
resume, every (key, step) already in the store is skipped, so each step's
metrics appear exactly once however often the process was killed.
"""
from __future__ import annotations

import fcntl
import logging
import os
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from memopt.config import CompareConfig
from memopt.environment import environment
from memopt.vocabulary import CONFIG_PARAM, EXPERIMENT, Tag

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

    def last_logged_step(self) -> int:
        """The highest step of any metric the run had when this logger started (-1: none)."""
        return max(self._logged_through.values(), default=-1)

    def metrics(self, values: dict[str, float], step: int, timestamp_ms: int | None = None) -> None:
        timestamp_ms = timestamp_ms or int(time.time() * 1000)
        fresh = [Metric(str(k), float(v), timestamp_ms, step) for k, v in values.items() if not self.already_logged(k, step)]
        with self._lock:
            self._pending.extend(fresh)

    def params(self, values: dict[str, object]) -> None:
        existing = self.client.get_run(self.run_id).data.params
        params = [Param(str(k), str(v)[:MAX_PARAM_LENGTH]) for k, v in values.items() if k not in existing]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def tags(self, values: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(str(k), str(v)) for k, v in values.items()])

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


def open_comparison(client: MlflowClient, cfg: CompareConfig, mlflow_run_id: str | None,
                    prefect_flow_run_id: str | None) -> str:
    """The comparison's parent run, with its params: the one `--resume` names, else the run `mlflow run`
    made (`mlflow_run_id`), else a new one. Returns its id."""
    parent = open_parent_run(client, cfg.resume or mlflow_run_id, run_name="compare")
    if cfg.resume and mlflow_run_id and mlflow_run_id != parent:
        # `mlflow run -P resume=ID` made a run of its own before our code ran: it stays a pointer to the
        # comparison it finishes, and `mlflow run` ends it from our exit code.
        client.set_tag(mlflow_run_id, Tag.RESUMED_PARENT, parent)
    client.log_batch(parent, params=[])  # fail early if the parent is not writable
    if cfg.resume:
        reopen_run(client, client.get_run(parent))
    if prefect_flow_run_id:  # from the MLflow run to the Prefect flow run (task states, retries, logs)
        client.set_tag(parent, Tag.PREFECT_FLOW_RUN, prefect_flow_run_id)
    # tags, not params: a resume may run on another version, and the report shows the latest
    client.log_batch(parent, tags=[RunTag(Tag.ENVIRONMENT + k, v) for k, v in environment().items()])
    existing = client.get_run(parent).data.params
    params = {**cfg.as_params(), CONFIG_PARAM: cfg.to_json()}
    fresh = [Param(k, v[:MAX_PARAM_LENGTH]) for k, v in params.items() if k not in existing]
    for i in range(0, len(fresh), 100):
        client.log_batch(parent, params=fresh[i : i + 100])
    return parent


def child_runs(client: MlflowClient, parent_run_id: str) -> dict[str, "mlflow.entities.Run"]:
    """The method's newest child run under the parent, by method name."""
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{Tag.PARENT}` = '{parent_run_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=1000,
    )
    return {r.data.tags[Tag.METHOD]: r for r in runs if Tag.METHOD in r.data.tags}


def child_run(client: MlflowClient, parent_run_id: str, method: str) -> "mlflow.entities.Run":
    """The method's child run: the existing one (a retry or resume continues it) or a new one."""
    existing = child_runs(client, parent_run_id).get(method)
    if existing is not None:
        return existing
    parent = client.get_run(parent_run_id)
    return client.create_run(
        parent.info.experiment_id, run_name=method, tags={Tag.PARENT: parent_run_id, Tag.METHOD: method}
    )


def kill_comparison(client: MlflowClient, parent: str, reason: str) -> None:
    """A comparison stopped (a signal, a cancellation): its unfinished child runs and the parent end KILLED, tagged
    with `reason`. Under `mlflow run` that ends the parent from our exit code, it ends FAILED there afterwards."""
    for run in child_runs(client, parent).values():
        if run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, Tag.STOPPED_BY, reason)
            client.set_terminated(run.info.run_id, "KILLED")
    client.set_tag(parent, Tag.STOPPED_BY, reason)
    client.set_terminated(parent, "KILLED")


def reopen_run(client: MlflowClient, run: "mlflow.entities.Run") -> None:
    """A run a resume continues: RUNNING again, without the tag of the stop that ended it."""
    if run.info.status != "RUNNING":
        client.update_run(run.info.run_id, status="RUNNING")
    if Tag.STOPPED_BY in run.data.tags:
        client.delete_tag(run.info.run_id, Tag.STOPPED_BY)


def fail_run(client: MlflowClient, run_id: str, reason: str) -> None:
    client.set_tag(run_id, Tag.FAILURE_REASON, reason[:5000])
    client.set_terminated(run_id, "FAILED")


def close_comparison(client: MlflowClient, parent: str, failed: list[str], end_parent: bool) -> None:
    """Tag the parent with the methods that failed (or clear the tag a resume made stale), and end it unless
    `mlflow run` owns it (it ends its run from our exit code)."""
    if failed:
        client.set_tag(parent, Tag.FAILED_METHODS, ",".join(failed))
    elif Tag.FAILED_METHODS in client.get_run(parent).data.tags:
        client.delete_tag(parent, Tag.FAILED_METHODS)
    if end_parent:
        client.set_terminated(parent, "FAILED" if failed else "FINISHED")


def fail_mlflow_run(reason: str) -> None:
    """Bad input under `mlflow run`: MLflow made the parent run before our code ran. End it FAILED with the
    reason, so that no run is left RUNNING. Not deleted: `mlflow run` sets the run FAILED itself afterwards
    (its "already terminated?" check compares a string status with ints, so it always does), and on a
    deleted run that raises, burying our message under a traceback. Empty FAILED runs are what `mlflow gc`
    and the UI's delete are for."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    try:
        fail_run(MlflowClient(os.environ.get("MLFLOW_TRACKING_URI")), run_id, f"bad input: {reason}")
    except Exception as exc:  # noqa: BLE001 (the store itself may be what is wrong; the error says so)
        print(f"note: could not end the run {run_id} that mlflow run created: {exc}", file=sys.stderr)


# --- Links and models ---------------------------------------------------------------------------

MLFLOW_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a sqlite store (README)


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI: on the tracking server itself, or where `mlflow ui` serves a sqlite store."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else MLFLOW_UI
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


class _NoHubLookups(logging.Filter):
    """Our models are trained here, not taken from the hub: MLflow's hub model card and license lookups have
    nothing to find, and their warnings would come with every model."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not message.startswith(("The model card could not be retrieved", "Unable to find license information"))


def log_model(tracking_uri: str, run_id: str, folder: Path, step: int) -> str:
    """Log the save_pretrained model in `folder` (with its tokenizer) as the run's MLflow model `model`
    (transformers flavour, text generation): `mlflow.transformers.load_model("runs:/RUN/model")` loads it.
    Returns its model id. Uses MLflow's fluent store settings: call it from a process of its own."""
    import mlflow.transformers
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    mlflow.set_tracking_uri(tracking_uri)
    # the logged model belongs to the run's experiment (MLflow takes the active one otherwise)
    mlflow.set_experiment(experiment_id=MlflowClient(tracking_uri).get_run(run_id).info.experiment_id)
    model = {"model": AutoModelForCausalLM.from_pretrained(folder), "tokenizer": AutoTokenizer.from_pretrained(folder)}
    quiet = _NoHubLookups()
    logger = logging.getLogger("mlflow.transformers")
    logger.addFilter(quiet)
    try:
        info = mlflow.transformers.log_model(
            model, name="model", task="text-generation", run_id=run_id, step=step,
            # what it needs, stated: inferring it would load the model once more in a subprocess
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}"],
        )
    finally:
        logger.removeFilter(quiet)
    return info.model_id


def run_model_id(client: MlflowClient, run_id: str) -> str | None:
    """The id of the model the run logged last (None if it logged none)."""
    outputs = client.get_run(run_id).outputs
    models = sorted(outputs.model_outputs, key=lambda m: m.step) if outputs else []
    return models[-1].model_id if models else None


def register_model(client: MlflowClient, name: str, run_id: str) -> "mlflow.entities.model_registry.ModelVersion":
    """A new version of the registered model `name` (created if new) from the run's logged model."""
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    model_id = run_model_id(client, run_id)
    if model_id is None:
        raise ValueError(f"run {run_id} logged no model to register")
    # the model's own storage as the source: a `models:/ID` source makes MLflow's sql registry look the model up
    # in the process's global store, not this client's
    source = client.get_logged_model(model_id).artifact_location
    return client.create_model_version(name, source, run_id=run_id, model_id=model_id)
