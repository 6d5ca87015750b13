"""One method of a comparison: its lr sweep, then its seed runs, then its result on its own run.

The runs and their tags are drawn in memopt/tracking.py; what each run trains with, and which trial
wins, is memopt/sweep.py. Every training is the train task (one process, retried from its checkpoint),
so a trial and a seed run are Prefect task runs named `trial-METHOD-lrX` and `train-METHOD-seedS`.
A finished run (trial or seed) is never trained again: a resume reads its result from MLflow; one the
flow lost between the task's end and the run's FINISHED is a Prefect cache hit (keyed on its whole
training configuration, the run id included).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from prefect import get_run_logger
from prefect.cache_policies import INPUTS, TASK_SOURCE

from memopt.blocks import TokenizedData
from memopt.config import CompareConfig, TrainConfig, TrainingOptions
from memopt.links import run_url
from memopt.report import log_run_plots
from memopt.sweep import Trial, best_trial, grid_edge, resolved_lr, seed_dir, seed_options, trial_dir, trial_options
from memopt.tracking import (child_run, fail_run, log_method_summary, log_params_once, log_seed_summary, nested_run,
                             reopen_run, seed_runs)
from memopt.trainer import NonFiniteLoss
from memopt.vocabulary import Metric, Param, Role, Tag
from tasks.data import log_dataset_inputs
from tasks.evaluate import evaluate
from tasks.train import train


@dataclass(frozen=True)
class Target:
    """What every run of the comparison trains: the model (the base folder in the finetune regime on a
    preset), the tokenized task data, and where the store and the folders are."""

    client: MlflowClient
    config: CompareConfig
    parent: str
    model_name: str
    data_dir: str
    ui: str = ""  # the MLflow UI's address, for the links in the log and in the runs' descriptions

    @property
    def uri(self) -> str:
        return self.config.resolved_tracking_uri()

    def method_dir(self, method: str) -> Path:
        return Path(self.config.output_dir) / "runs" / self.parent / method

    def url(self, run) -> str:
        return run_url(self.ui, run.info.experiment_id, run.info.run_id) if self.ui else run.info.run_id


def run_method(target: Target, method: str) -> str:
    """The method's sweep, seed runs and result in its child run (a finished one is skipped, an unfinished
    one continued); returns its final status."""
    log, client, config = get_run_logger(), target.client, target.config
    run = child_run(client, target.parent, method, target.ui)
    run_id = run.info.run_id
    if run.info.status == "FINISHED":
        log.info("%s: already finished in run %s; skipped", method, target.url(run))
        return "FINISHED"
    reopen_run(client, run)
    log.info("%s: MLflow run %s", method, target.url(run))
    log_dataset_inputs(TokenizedData(Path(target.data_dir)), run_id, target.uri)  # its data, in its own run too
    lr, failure = choose_lr(target, method, run_id)
    if failure:
        fail_run(client, run_id, failure)
        log.error("%s: FAILED: %s", method, failure)
        return "FAILED"
    log_params_once(client, run_id, {Param.CHOSEN_LR: lr, Param.SEEDS: ",".join(map(str, config.final_seeds))})
    method_dir = target.method_dir(method)
    jobs = [Job(nested_run(client, run_id, Role.SEED, f"{method} seed={seed}", {Tag.METHOD: method, Tag.SEED: str(seed)}),
                seed_options(config, seed, lr if config.lr_source(method) == "sweep" else None), seed_dir(method_dir, seed),
                f"train-{method}-seed{seed}") for seed in config.final_seeds]
    # one at a time: each seed run's speed and peak memory are measured with the machine to itself
    reasons = train_runs(target, method, jobs, evaluate_model=True, at_once=1)
    failures = [f"seed {seed}: {reason}" for seed, reason in zip(config.final_seeds, reasons) if reason]
    finished = [r for r in seed_runs(client, run_id) if r.info.status == "FINISHED"]
    if finished:
        log_seed_summary(client, run_id, finished, int(finished[0].data.params[Param.TOTAL_STEPS]))
    if failures:
        fail_run(client, run_id, "; ".join(failures))
        log.error("%s: FAILED: %s", method, "; ".join(failures))
        return "FAILED"
    log_method_summary(client, target.parent, method, run_id)
    client.set_terminated(run_id, "FINISHED")
    return "FINISHED"


def choose_lr(target: Target, method: str, run_id: str) -> tuple[float, str]:
    """The lr the method's seed runs train at, and "" or why it cannot be chosen (every trial failed)."""
    client, config = target.client, target.config
    grid = config.lr_grid_for(method)
    # no lr_grid param without a sweep: MLflow would show it as ''
    log_params_once(client, run_id, {Param.LR_SOURCE: config.lr_source(method),
                                     **({Param.LR_GRID: ",".join(f"{x:g}" for x in grid)} if grid else {})})
    if not grid:
        return resolved_lr(config, method), ""
    method_dir = target.method_dir(method)
    jobs = [Job(nested_run(client, run_id, Role.TRIAL, f"{method} lr={lr:g}", {Tag.METHOD: method, Tag.TRIAL_LR: repr(lr)}),
                trial_options(config, lr), trial_dir(method_dir, lr), f"trial-{method}-lr{lr:g}") for lr in grid]
    # several at once: a trial's loss does not depend on what else runs (its speed, which nobody reads, does);
    # one at a time under torchrun, whose processes already take every device and the rendezvous port
    at_once = config.sweep_workers if config.training.world_size == 1 else 1
    reasons = train_runs(target, method, jobs, evaluate_model=False, at_once=at_once)
    trials = [Trial(lr, None if reason else client.get_run(job.run.info.run_id).data.metrics.get(Metric.VAL_LOSS), reason)
              for lr, job, reason in zip(grid, jobs, reasons)]
    best = best_trial(trials)
    if best is None:
        return 0.0, "every trial of the lr sweep failed: " + "; ".join(f"lr {t.lr:g}: {t.reason}" for t in trials)
    edge = grid_edge(grid, best.lr)
    if edge:
        client.set_tag(run_id, Tag.LR_ON_EDGE, edge)
    return best.lr, ""


@dataclass(frozen=True)
class Job:
    """One training of a method into a nested run: its options, its folder and its Prefect task run's name."""

    run: Any  # mlflow.entities.Run
    options: TrainingOptions
    folder: Path
    task_name: str


def train_runs(target: Target, method: str, jobs: list[Job], evaluate_model: bool, at_once: int) -> list[str]:
    """Train `method` into each job's run, `at_once` processes at a time (a FINISHED run is skipped), evaluate
    each if asked, end each run; returns "" or the reason, per job."""
    client, config = target.client, target.config
    reasons = [""] * len(jobs)
    pending = []
    for i, job in enumerate(jobs):
        if job.run.info.status == "FINISHED":
            get_run_logger().info("%s: %s already finished in run %s; skipped", method, job.task_name, job.run.info.run_id)
            continue
        reason = job.run.data.tags.get(Tag.FAILURE_REASON, "")
        if job.run.info.status == "FAILED" and reason.startswith(NonFiniteLoss.__name__):
            reasons[i] = reason  # the same seed gives the same NaN: not trained again on a resume
            continue
        reopen_run(client, job.run)
        pending.append(i)
    for start in range(0, len(pending), at_once):
        # a seed run's step-0 loss is the initial one of the report; a trial's would be the same again
        futures = {i: _train_task(config, jobs[i].task_name).submit(_train_config(target, method, jobs[i], evaluate_model),
                                                                    target.url(jobs[i].run) if target.ui else "")
                   for i in pending[start : start + at_once]}
        for i, future in futures.items():
            future.wait()
            reasons[i] = _end(target, jobs[i], future.state, evaluate_model)
    return reasons


def _train_task(config: CompareConfig, task_name: str):
    return train.with_options(retries=config.retries, task_run_name=task_name, cache_policy=INPUTS + TASK_SOURCE,
                              persist_result=True)


def _train_config(target: Target, method: str, job: Job, evaluate_at_start: bool) -> TrainConfig:
    config = target.config
    return TrainConfig(method=method, model_name=target.model_name, data_dir=target.data_dir, output_dir=str(job.folder),
                       run_id=job.run.info.run_id, tracking_uri=target.uri, method_args=config.method_hyperparameters(method),
                       training=job.options, random_init=config.regime == "pretrain", evaluate_at_start=evaluate_at_start)


def _end(target: Target, job: Job, state, evaluate_model: bool) -> str:
    """A job's training ended in `state`: fail its run with the reason, or evaluate it (if asked) and finish it."""
    client, run_id = target.client, job.run.info.run_id
    if state.is_failed():
        reason = str(state.result(raise_on_failure=False))
        fail_run(client, run_id, reason)
        return reason
    if evaluate_model:
        steps = int(client.get_run(run_id).data.params[Param.TOTAL_STEPS])
        evaluate.with_options(task_run_name=job.task_name.replace("train-", "evaluate-", 1))(
            state.result(), target.data_dir, run_id, target.uri, job.options.batch_size, steps)
        log_run_plots(target.uri, run_id, job.folder / "plots")
    client.set_terminated(run_id, "FINISHED")
    return ""
