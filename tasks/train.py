"""The train task: run one method's training process and wait for it.

The process is `python -m memopt.train CONFIG.json` (memopt/train.py): its own
OS process for a fair peak memory and an isolated crash. A Prefect retry runs
it again; it resumes from its last checkpoint into the same child run. A NaN or
inf loss is not retried: the same seed would give the same NaN; nor is a
checkpoint that does not read. On SIGTERM, SIGINT or a cancellation the flow
stops the process's whole group here (flows/stopping.py).
"""
from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from mlflow import MlflowClient
from prefect import task

from memopt.config import TrainConfig
from memopt.distributed import launch_command
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


@task(name="train", retries=1, retry_delay_seconds=0, retry_condition_fn=_retry_unless_nonfinite)
def train(cfg: TrainConfig) -> str:
    """Train one method; returns the folder of its final model."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "train_config.json"
    cfg.to_json(config_path)
    # plain Python, or torchrun when several processes train (memopt/distributed.py)
    opts = cfg.training
    # a process group of its own: a Ctrl-C reaches the flow alone, which stops the whole group (torchrun's workers too)
    proc = subprocess.Popen(launch_command(str(config_path), opts.nproc_per_node, opts.nnodes, opts.rdzv_endpoint, cfg.run_id),
                            start_new_session=True, preexec_fn=die_with_parent)
    try:
        proc.wait()
    finally:
        stop_process_group(proc)  # on a signal or a cancellation the flow stops here
    if proc.returncode != 0:
        reason = failure_reason(proc.returncode, cfg.tracking_uri, cfg.run_id)
        # torchrun exits 1 whatever its workers' codes were: the tag rank 0 wrote tells a NaN apart
        final = proc.returncode == EXIT_NONFINITE or reason.startswith(tuple(e.__name__ for e in NOT_RETRIABLE))
        raise TrainingFailed(reason, retriable=not final)
    return str(out / "final")
