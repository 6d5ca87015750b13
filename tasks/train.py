"""The train task: run one method's training process and watch it.

The process is `python -m memopt.train CONFIG.json` (memopt/train.py): its own
OS process for a fair peak memory and an isolated crash. A Prefect retry runs
it again; it resumes from its last checkpoint into the same child run. A NaN or
inf loss is not retried: the same seed would give the same NaN; nor is a
checkpoint that does not read. On SIGTERM, SIGINT or a cancellation the flow
stops the process's whole group here (flows/stopping.py).

While it trains, each progress line it prints (memopt/progress.py) goes to the
task's log and moves the method's Prefect progress artifact; its other output
passes through.
"""
from __future__ import annotations

import logging
import re
import signal
import subprocess
from pathlib import Path

from mlflow import MlflowClient
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import TaskRunContext

from memopt.config import TrainConfig
from memopt.distributed import launch_command
from memopt.progress import describe, parse_line, percent
from memopt.stopping import die_with_parent, stop_process_group
from memopt.train import EXIT_NONFINITE, NOT_RETRIABLE
from memopt.vocabulary import Tag


class TrainingFailed(RuntimeError):
    def __init__(self, reason: str, retriable: bool = True):
        super().__init__(reason)
        self.reason = reason
        self.retriable = retriable


def failure_reason(returncode: int, tracking_uri: str, run_id: str) -> str:
    """What the process said about its failure, or how it died when it could say nothing."""
    tag = MlflowClient(tracking_uri).get_run(run_id).data.tags.get(Tag.FAILURE_REASON)
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if name == "SIGKILL" else ""
        return f"training process killed by {name}{hint}"
    return tag or f"training process exited with code {returncode}"


def _retry_unless_nonfinite(task, task_run, state) -> bool:
    exc = state.result(raise_on_failure=False)
    return not (isinstance(exc, TrainingFailed) and not exc.retriable)


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """The task run's logger, or this module's when the body runs outside Prefect (`train.fn`)."""
    return get_run_logger() if TaskRunContext.get() else logging.getLogger(__name__)


def watch(proc: subprocess.Popen, method: str, run_url: str) -> None:
    """Read the process's output to its end: progress lines to the log and, in a task run, to the progress
    artifact; the rest through. Nothing here may stop the reading: a process that writes into a closed pipe dies."""
    log, context = _logger(), TaskRunContext.get()
    link = f" ([MLflow run]({run_url}))" if run_url else ""
    # one artifact per training (a method's trials train side by side): keyed by the task run's name, in the
    # letters, digits and dashes a key may hold
    key = re.sub(r"[^a-z0-9-]+", "-", context.task_run.name.lower()) + "-progress" if context else ""
    artifact = None
    for line in proc.stdout:
        values = parse_line(line)
        if values is None:
            print(line, end="", flush=True)
            continue
        log.info(describe(method, values))
        try:
            if context:
                artifact = artifact or create_progress_artifact(
                    0.0, key=key, description=f"{method}: the share of its training steps done{link}")
                update_progress_artifact(artifact, percent(values))
        except Exception as exc:  # noqa: BLE001 (the Prefect API: showing progress must not stop the training)
            log.warning("%s: progress artifact not updated: %s", method, exc)


@task(name="train", retries=1, retry_delay_seconds=0, retry_condition_fn=_retry_unless_nonfinite)
def train(cfg: TrainConfig, run_url: str = "") -> str:
    """Train one method; returns the folder of its final model. `run_url`: its child run in the MLflow UI."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "train_config.json"
    cfg.to_json(config_path)
    MlflowClient(cfg.tracking_uri).log_artifact(cfg.run_id, str(config_path))
    if run_url:
        _logger().info("%s: MLflow run %s", cfg.method, run_url)
    # plain Python, or torchrun when several processes train (memopt/distributed.py)
    opts = cfg.training
    command = launch_command(str(config_path), opts.nproc_per_node, opts.nnodes, opts.rdzv_endpoint, cfg.run_id)
    # a process group of its own: a Ctrl-C reaches the flow alone, which stops the whole group (torchrun's workers too)
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, bufsize=1,
                          start_new_session=True, preexec_fn=die_with_parent) as proc:
        try:
            watch(proc, cfg.method, run_url)
            proc.wait()
        finally:  # on a signal, a cancellation or a failure while watching: not left training into a pipe nobody reads
            stop_process_group(proc)
    if proc.returncode != 0:
        reason = failure_reason(proc.returncode, cfg.tracking_uri, cfg.run_id)
        # torchrun exits 1 whatever its workers' codes were: the tag rank 0 wrote tells a NaN apart
        final = proc.returncode == EXIT_NONFINITE or reason.startswith(tuple(e.__name__ for e in NOT_RETRIABLE))
        raise TrainingFailed(reason, retriable=not final)
    return str(out / "final")
