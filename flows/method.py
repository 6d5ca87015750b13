"""One method of a comparison: its lr sweep, then its seed runs, then its result on its own run.

The runs and their tags are drawn in memopt/tracking.py; what each run trains with, and which trial
wins, is memopt/sweep.py. Every training is the train task (one process, retried from its checkpoint),
so a trial and a seed run are Prefect task runs named `trial-METHOD-lrX` and `train-METHOD-seedS`.
A finished run (trial or seed) is never trained again: a resume reads its result from MLflow; one the
flow lost between the task's end and the run's FINISHED is a Prefect cache hit (keyed on its whole
training configuration, the run id included).
"""
from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient
from prefect import get_run_logger
from prefect.cache_policies import INPUTS, TASK_SOURCE

from memopt.config import CompareConfig, TrainConfig, TrainingOptions
from memopt.sweep import Trial, best_trial, grid_edge, resolved_lr, seed_dir, seed_options, trial_dir, trial_options
from memopt.tracking import child_run, fail_run, log_params_once, log_seed_summary, nested_run, seed_runs
from memopt.vocabulary import Metric, Param, Role, Tag
from tasks.evaluate import evaluate
from tasks.train import train


class Target:
    """What every run of the comparison trains: the model (the base folder in the finetune regime on a
    preset), the tokenized task data, and where the store and the folders are."""

    def __init__(self, client: MlflowClient, config: CompareConfig, parent: str, model_name: str, data_dir: str):
        self.client, self.config, self.parent, self.model_name, self.data_dir = client, config, parent, model_name, data_dir
        self.uri = config.resolved_tracking_uri()

    def method_dir(self, method: str) -> Path:
        return Path(self.config.output_dir) / "runs" / self.parent / method


def run_method(target: Target, method: str) -> str:
    """The method's sweep, seed runs and result in its child run (a finished one is skipped, an unfinished
    one continued); returns its final status."""
    log, client, config = get_run_logger(), target.client, target.config
    run = child_run(client, target.parent, method)
    run_id = run.info.run_id
    if run.info.status == "FINISHED":
        log.info("%s: already finished in run %s; skipped", method, run_id)
        return "FINISHED"
    if run.info.status != "RUNNING":
        client.update_run(run_id, status="RUNNING")
    lr, failure = choose_lr(target, method, run_id)
    if failure:
        fail_run(client, run_id, failure)
        log.error("%s: FAILED: %s", method, failure)
        return "FAILED"
    log_params_once(client, run_id, {Param.CHOSEN_LR: lr, Param.SEEDS: ",".join(map(str, config.final_seeds))})
    failures = []
    for seed in config.final_seeds:
        seed_run = nested_run(client, run_id, Role.SEED, f"{method} seed={seed}", {Tag.METHOD: method, Tag.SEED: str(seed)})
        reason = train_run(target, method, seed_run, seed_options(config, seed, lr if config.lr_source(method) == "sweep" else None),
                           seed_dir(target.method_dir(method), seed), f"train-{method}-seed{seed}", evaluate_model=True)
        if reason:
            failures.append(f"seed {seed}: {reason}")
    finished = [r for r in seed_runs(client, run_id) if r.info.status == "FINISHED"]
    if finished:
        log_seed_summary(client, run_id, finished, int(finished[0].data.params[Param.TOTAL_STEPS]))
    if failures:
        fail_run(client, run_id, "; ".join(failures))
        log.error("%s: FAILED: %s", method, "; ".join(failures))
        return "FAILED"
    client.set_terminated(run_id, "FINISHED")
    return "FINISHED"


def choose_lr(target: Target, method: str, run_id: str) -> tuple[float, str]:
    """The lr the method's seed runs train at, and "" or why it cannot be chosen (every trial failed)."""
    client, config = target.client, target.config
    grid = config.lr_grid_for(method)
    log_params_once(client, run_id, {Param.LR_SOURCE: config.lr_source(method), Param.LR_GRID: ",".join(f"{x:g}" for x in grid)})
    if not grid:
        return resolved_lr(config, method), ""
    trials = []
    for lr in grid:
        trial = nested_run(client, run_id, Role.TRIAL, f"{method} lr={lr:g}", {Tag.METHOD: method, Tag.TRIAL_LR: repr(lr)})
        reason = train_run(target, method, trial, trial_options(config, lr), trial_dir(target.method_dir(method), lr),
                           f"trial-{method}-lr{lr:g}", evaluate_model=False)
        trials.append(Trial(lr, None if reason else client.get_run(trial.info.run_id).data.metrics.get(Metric.VAL_LOSS), reason))
    best = best_trial(trials)
    if best is None:
        return 0.0, "every trial of the lr sweep failed: " + "; ".join(f"lr {t.lr:g}: {t.reason}" for t in trials)
    edge = grid_edge(grid, best.lr)
    if edge:
        client.set_tag(run_id, Tag.LR_ON_EDGE, edge)
    return best.lr, ""


def train_run(target: Target, method: str, run, options: TrainingOptions, folder: Path, task_name: str,
              evaluate_model: bool) -> str:
    """Train `method` into the nested run `run` (skipped when FINISHED), evaluate it if asked, end it;
    returns "" or the reason it failed."""
    client, config = target.client, target.config
    run_id = run.info.run_id
    if run.info.status == "FINISHED":
        get_run_logger().info("%s: %s already finished in run %s; skipped", method, task_name, run_id)
        return ""
    if run.info.status != "RUNNING":
        client.update_run(run_id, status="RUNNING")
    cfg = TrainConfig(method=method, model_name=target.model_name, data_dir=target.data_dir, output_dir=str(folder),
                      run_id=run_id, tracking_uri=target.uri, method_args=config.method_hyperparameters(method),
                      training=options, random_init=config.regime == "pretrain")
    state = train.with_options(retries=config.retries, task_run_name=task_name, cache_policy=INPUTS + TASK_SOURCE,
                               persist_result=True)(cfg, return_state=True)
    if state.is_failed():
        reason = str(state.result(raise_on_failure=False))
        fail_run(client, run_id, reason)
        return reason
    if evaluate_model:
        steps = int(client.get_run(run_id).data.params[Param.TOTAL_STEPS])
        evaluate.with_options(task_run_name=task_name.replace("train-", "evaluate-", 1))(
            state.result(), target.data_dir, run_id, target.uri, options.batch_size, steps)
    client.set_terminated(run_id, "FINISHED")
    return ""
