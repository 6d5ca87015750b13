"""MLflow logging for the training process (off the training thread), and the runs of a comparison.

A synchronous MLflow call costs about 8 ms on sqlite here; one `log_batch` of
hundreds of metrics costs about the same. So metrics go into a queue and a
background thread sends them in batches. Logging is idempotent by step: on a
resume, every (key, step) already in the store is skipped, so each step's
metrics appear exactly once however often the process was killed.

The runs of one comparison, in experiment `memopt`; each arrow is MLflow's own `mlflow.parentRunId`
tag, and `memopt.role` (vocabulary.Role) says what a run is:

    parent (the comparison: config_json, memopt.regime, memopt.base_model / memopt.base_model_id)
    ├── base-model        role base: the finetune regime's base model on a preset, pretrained with AdamW
    │                     (only under the comparison that made it; later ones reuse it from the cache and
    │                     name it in their parent's tags; it is logged as an MLflow model, a LoggedModel)
    └── METHOD            role method, one per method (`child_runs`): the method's result. Params lr_grid,
        │                 chosen_lr, lr_source, seeds; tag memopt.lr_on_grid_edge. Metrics: over its seed
        │                 runs, KEY is the mean and KEY_std / KEY_min / KEY_max the spread (Metric.over_seeds;
        │                 final_val_loss, tokens_per_s, peak_rss_mb, ...: `SEED_METRICS`), tokens_per_s being
        │                 each seed run's whole-run throughput (`throughput`), initial_val_loss the step-0 loss
        ├── METHOD lr=X   role trial, tag memopt.trial_lr = repr(X): a short training run of the sweep
        │                 (sweep_steps); its score is its last val_loss
        └── METHOD seed=S role seed, tag memopt.seed = S: a full training run at the chosen lr, evaluated
                          (final_val_loss, answer_accuracy, ...); its own histories, memory samples, model

Trial and seed runs are training runs like any other (params lr and seed, every step's metrics, the
model as artifacts); their folders are runs/PARENT/METHOD/trial-lr{X}/ and runs/PARENT/METHOD/seed-{S}/.
"""
from __future__ import annotations

import fcntl
import getpass
import logging
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag, SourceType
from mlflow.exceptions import MlflowException
from mlflow.utils.git_utils import get_git_branch, get_git_commit, get_git_repo_url
from mlflow.utils.mlflow_tags import (MLFLOW_GIT_BRANCH, MLFLOW_GIT_COMMIT, MLFLOW_GIT_REPO_URL, MLFLOW_SOURCE_NAME,
                                      MLFLOW_SOURCE_TYPE, MLFLOW_USER)

from memopt.config import CompareConfig
from memopt.environment import environment
from memopt.links import mlflow_ui, run_url
from memopt.stats import spread
from memopt.vocabulary import (CONFIG_PARAM, EXPERIMENT, EXPERIMENT_KIND, MODEL_TRAINING_KIND, SUMMARY_METRICS, Role, Tag,
                               summary_metric)
from memopt.vocabulary import Metric as Key
from memopt.vocabulary import Param as ParamName

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

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINT = ROOT / "flows" / "compare.py"


def experiment_id(client: MlflowClient, name: str) -> str:
    """The experiment's id, created if it does not exist yet, and of the kind "model training" unless it says
    otherwise: MLflow 3's UI shows the runs of such an experiment, not the traces of a GenAI one."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            client.create_experiment(name)
        except MlflowException as exc:  # another comparison created it since we looked
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        experiment = client.get_experiment_by_name(name)
    if EXPERIMENT_KIND not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING_KIND)
    return experiment.experiment_id


def source_tags() -> dict[str, str]:
    """MLflow's own source tags (user, entry point, git commit) for the runs memopt creates. `mlflow.start_run`
    derives them from sys.argv[0], which under a Prefect worker or `serve` is Prefect's engine, not this project."""
    entry = str(ENTRY_POINT)
    tags = {MLFLOW_USER: getpass.getuser(), MLFLOW_SOURCE_NAME: entry, MLFLOW_SOURCE_TYPE: SourceType.to_string(SourceType.LOCAL)}
    for key, value in ((MLFLOW_GIT_COMMIT, get_git_commit(entry)), (MLFLOW_GIT_BRANCH, get_git_branch(entry)),
                       (MLFLOW_GIT_REPO_URL, get_git_repo_url(entry))):
        if value:
            tags[key] = value
    return tags


def open_parent_run(client: MlflowClient, run_id: str | None, run_name: str | None = None,
                    experiment: str = EXPERIMENT) -> str:
    """The parent run: `run_id` when given (--resume), else a new one in `experiment`, source-tagged."""
    if run_id:
        client.get_run(run_id)  # raises if it does not exist
        return run_id
    return client.create_run(experiment_id(client, experiment), run_name=run_name, tags=source_tags()).info.run_id


def open_comparison(client: MlflowClient, cfg: CompareConfig, mlflow_run_id: str | None,
                    prefect_flow_run: tuple[str, str] | None = None) -> str:
    """The comparison's parent run, named after the comparison, with its params: the one `--resume` names, else
    the run `mlflow run` made (`mlflow_run_id`) when it is in the comparison's experiment, else a new one there.
    A run `mlflow run` made that is not the parent (a resume; another experiment, such as "Default" when no
    --experiment-name was given) only points at the parent, and `mlflow run` ends it from our exit code.
    `prefect_flow_run` is (id, UI address or ""). Returns the parent's id."""
    adopt = mlflow_run_id and not cfg.resume and (
        client.get_run(mlflow_run_id).info.experiment_id == experiment_id(client, cfg.experiment))
    parent = open_parent_run(client, cfg.resume or (mlflow_run_id if adopt else None), cfg.run_name(), cfg.experiment)
    client.log_batch(parent, params=[])  # fail early if the parent is not writable
    if cfg.resume:
        reopen_run(client, client.get_run(parent))
    ui = mlflow_ui(cfg.resolved_tracking_uri(), cfg.mlflow_ui_url)
    run = client.get_run(parent)
    if adopt:  # `mlflow run` made it: its own source tags (the project, its commit) stay
        client.update_run(parent, name=cfg.run_name())
        client.log_batch(parent, tags=[RunTag(k, v) for k, v in source_tags().items() if k not in run.data.tags])
    url = run_url(ui, run.info.experiment_id, parent)
    if mlflow_run_id and mlflow_run_id != parent:
        client.update_run(mlflow_run_id, name=f"→ {run.info.run_name}")
        client.set_tag(mlflow_run_id, Tag.COMPARISON_PARENT, parent)
        client.set_tag(mlflow_run_id, Tag.DESCRIPTION, f"Points at the comparison [{run.info.run_name}]({url}) "
                       f"(experiment {cfg.experiment!r}), which this `mlflow run` finished.")
    description = f"Comparison of {', '.join(cfg.methods)} on `{cfg.model_name}`: one child run per method, the report " \
                  f"in this run's artifacts (report/)."
    if prefect_flow_run:  # from the MLflow run to the Prefect flow run (task states, retries, logs)
        client.set_tag(parent, Tag.PREFECT_FLOW_RUN, prefect_flow_run[0])
        if prefect_flow_run[1]:
            description += f" Prefect flow run: [{prefect_flow_run[0]}]({prefect_flow_run[1]})."
    client.set_tag(parent, Tag.DESCRIPTION, description)
    # tags, not params: a resume may run on another version, and the report shows the latest
    client.log_batch(parent, tags=[RunTag(Tag.ENVIRONMENT + k, v) for k, v in environment().items()])
    params = {**cfg.as_params(), CONFIG_PARAM: cfg.to_json()}
    fresh = [Param(k, v[:MAX_PARAM_LENGTH]) for k, v in params.items() if k not in run.data.params]
    for i in range(0, len(fresh), 100):
        client.log_batch(parent, params=fresh[i : i + 100])
    return parent


def nested_runs(client: MlflowClient, parent_run_id: str, role: Role | None = None) -> list["mlflow.entities.Run"]:
    """The runs whose parent is `parent_run_id` (with `role`: those of that role), oldest first."""
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    where = f"tags.`{Tag.PARENT}` = '{parent_run_id}'" + (f" and tags.`{Tag.ROLE}` = '{role}'" if role else "")
    return client.search_runs([experiment_id], filter_string=where, order_by=["attributes.start_time ASC"],
                              max_results=1000)


def child_runs(client: MlflowClient, parent_run_id: str) -> dict[str, "mlflow.entities.Run"]:
    """The method's newest child run under the parent, by method name."""
    return {r.data.tags[Tag.METHOD]: r for r in nested_runs(client, parent_run_id)
            if Tag.METHOD in r.data.tags and r.data.tags.get(Tag.ROLE, Role.METHOD) == Role.METHOD}


def nested_run(client: MlflowClient, parent_run_id: str, role: Role, name: str, tags: dict[str, str],
               description: str = "") -> "mlflow.entities.Run":
    """The run under `parent_run_id` with `role` and `tags` (a retry or resume continues it), or a new one with its
    parent's source tags (entry point, git commit) and `description` (Markdown) when given."""
    for run in nested_runs(client, parent_run_id, role):
        if all(run.data.tags.get(k) == v for k, v in tags.items()):
            return run
    parent = client.get_run(parent_run_id)
    source = {k: v for k, v in parent.data.tags.items() if k.startswith("mlflow.source.") or k == MLFLOW_USER}
    return client.create_run(parent.info.experiment_id, run_name=name, tags={
        **source, Tag.PARENT: parent_run_id, Tag.ROLE: role, **tags, **({Tag.DESCRIPTION: description} if description else {})})


def child_run(client: MlflowClient, parent_run_id: str, method: str, ui: str = "") -> "mlflow.entities.Run":
    """The method's child run: the existing one (a retry or resume continues it) or a new one, described with a
    link to its parent in the MLflow UI at `ui` when given."""
    existing = child_runs(client, parent_run_id).get(method)
    if existing is not None:
        return existing
    tags = {Tag.METHOD: method}
    regime = client.get_run(parent_run_id).data.tags.get(Tag.REGIME)
    description = ""
    if ui:
        parent = client.get_run(parent_run_id)
        link = f"[{parent.info.run_name}]({run_url(ui, parent.info.experiment_id, parent_run_id)})"
        description = (f"`{method}` in the comparison {link}: its result over its seed runs (nested under it, each "
                       "with its model, its plots in `plots/` and its `train_config.json`), its lr sweep's trials.")
    return nested_run(client, parent_run_id, Role.METHOD, method, {**tags, **({Tag.REGIME: regime} if regime else {})},
                      description)


def seed_runs(client: MlflowClient, method_run_id: str) -> list["mlflow.entities.Run"]:
    """A method's seed runs, by seed."""
    return sorted(nested_runs(client, method_run_id, Role.SEED), key=lambda r: int(r.data.tags[Tag.SEED]))


def trial_runs(client: MlflowClient, method_run_id: str) -> list["mlflow.entities.Run"]:
    """A method's sweep trials, by learning rate."""
    return sorted(nested_runs(client, method_run_id, Role.TRIAL), key=lambda r: float(r.data.tags[Tag.TRIAL_LR]))


def log_params_once(client: MlflowClient, run_id: str, params: dict[str, object]) -> None:
    """Log the params the run does not have yet (a resume logs nothing twice; params cannot change)."""
    existing = client.get_run(run_id).data.params
    fresh = [Param(str(k), str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items() if str(k) not in existing]
    for i in range(0, len(fresh), 100):
        client.log_batch(run_id, params=fresh[i : i + 100])


# --- A method's result over its seed runs ----------------------------------------------------------

# Summarized as mean and spread (Metric.over_seeds); every other final metric of the seed runs as the mean.
SEED_METRICS = (Key.FINAL_VAL_LOSS, Key.TOKENS_PER_S, Key.PEAK_RSS_MB, Key.FINAL_VAL_PERPLEXITY, Key.ANSWER_ACCURACY)
MEAN_ONLY = (Key.TRAIN_LOSS, Key.VAL_LOSS, Key.INITIAL_VAL_LOSS, Key.RSS_AT_START_MB, Key.OPTIMIZER_STATE_BYTES,
             Key.EXPECTED_STATE_BYTES, Key.TRAINABLE_PARAMS, Key.CUDA_PEAK_ALLOCATED_MB)


def throughput(client: MlflowClient, run: "mlflow.entities.Run") -> float | None:
    """Tokens per second of a training run's steps: the global batch's tokens of every step ÷ their summed
    `step_time_s` (forward, backward, optimizer step)."""
    step_times = [m.value for m in client.get_metric_history(run.info.run_id, Key.STEP_TIME_S)]
    params = run.data.params
    tokens = int(params.get(ParamName.GLOBAL_BATCH_SIZE, 0)) * int(params.get(ParamName.SEQ_LEN, 0)) * len(step_times)
    return tokens / sum(step_times) if tokens and sum(step_times) > 0 else None


def seed_values(client: MlflowClient, runs: list["mlflow.entities.Run"]) -> dict[str, list[float]]:
    """{metric: [value per seed run]} for SEED_METRICS and MEAN_ONLY (tokens_per_s: `throughput`)."""
    values: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        metrics = {**run.data.metrics, Key.TOKENS_PER_S: throughput(client, run)}
        initial = [m.value for m in client.get_metric_history(run.info.run_id, Key.VAL_LOSS) if m.step == 0]
        metrics[Key.INITIAL_VAL_LOSS] = initial[0] if initial else None
        for key in (*SEED_METRICS, *MEAN_ONLY):
            if metrics.get(key) is not None:
                values[key].append(float(metrics[key]))
    return dict(values)


def log_seed_summary(client: MlflowClient, method_run_id: str, runs: list["mlflow.entities.Run"], step: int) -> None:
    """The method's result on its run: each metric's mean over `runs` under its own name, and for
    SEED_METRICS its std, min and max (Metric.over_seeds)."""
    metrics: dict[str, float] = {}
    for key, values in seed_values(client, runs).items():
        try:
            s = spread(values)
        except ValueError:  # nothing finite (a NaN loss): no summary for this metric
            continue
        metrics[key] = s.mean
        if key in SEED_METRICS:
            metrics.update({Key.over_seeds(key, "std"): s.std, Key.over_seeds(key, "min"): s.min,
                            Key.over_seeds(key, "max"): s.max})
    logged = client.get_run(method_run_id).data.metrics  # a resume that summarizes again logs nothing twice
    now = int(time.time() * 1000)
    client.log_batch(method_run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items() if k not in logged])


def log_model(client: MlflowClient, run_id: str, model_dir: str | Path, name: str = "model", step: int = 0) -> str:
    """The save_pretrained folder `model_dir` (model and tokenizer) as an MLflow model of the transformers
    flavour: a LoggedModel whose source is `run_id`, loadable with `mlflow.transformers.load_model(
    "models:/ID")` or, for the name "model", `runs:/RUN/model`. By run id, not through an active run (per thread
    in MLflow). `step`: the run's step the model is the output of. Returns the model id."""
    import mlflow.transformers
    import torch
    import transformers
    from mlflow.entities import LoggedModelOutput
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    # Given, not inferred: inference imports the model in a subprocess (seconds) to find what it needs.
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}"]
    flavour_log = logging.getLogger("mlflow.transformers")
    level = flavour_log.level
    flavour_log.setLevel(logging.ERROR)  # no hub model card or licence to find here: not news
    try:
        with tempfile.TemporaryDirectory() as tmp:
            saved = Path(tmp) / "model"
            mlflow.transformers.save_model({"model": model, "tokenizer": tokenizer}, str(saved), task="text-generation",
                                           pip_requirements=requirements)
            experiment_id = client.get_run(run_id).info.experiment_id
            logged = client.create_logged_model(experiment_id, name=name, source_run_id=run_id)
            client.log_model_artifacts(logged.model_id, str(saved))
    finally:
        flavour_log.setLevel(level)
    client.finalize_logged_model(logged.model_id, "READY")
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=step)])
    return logged.model_id


def log_method_summary(client: MlflowClient, parent_run_id: str, method: str, run_id: str) -> None:
    """The method's SUMMARY_METRICS on the parent run as `METHOD.KEY` (once: a resume leaves them be)."""
    metrics, logged = client.get_run(run_id).data.metrics, client.get_run(parent_run_id).data.metrics
    now = int(time.time() * 1000)
    summary = [Metric(summary_metric(method, key), metrics[key], now, 0) for key in SUMMARY_METRICS
               if key in metrics and summary_metric(method, key) not in logged]
    client.log_batch(parent_run_id, metrics=summary)


def kill_comparison(client: MlflowClient, parent: str, reason: str) -> None:
    """A comparison stopped (a signal, a cancellation): its unfinished runs (the methods', their trials' and seed
    runs', the base model's) and the parent end KILLED, tagged with `reason`. Under `mlflow run` that ends the parent
    from our exit code, it ends FAILED there afterwards."""
    runs = nested_runs(client, parent)
    runs += [run for child in runs if child.info.status == "RUNNING" for run in nested_runs(client, child.info.run_id)]
    for run in runs:
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


# --- Models (the run links are memopt.links) ---------------------------------------------------


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
