"""compare_optimizers: tokenize once, train and evaluate each method, report.

    python -m flows.compare --methods adamw,galore,blockllm --max_steps 200
    python -m flows.compare --resume PARENT_RUN_ID
    python -m flows.compare --help          # every parameter, declared in memopt/config.py

Exit codes: 0 every method finished; 1 at least one failed (the report lists
it with its reason); 2 bad input (nothing was started).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from mlflow import MlflowClient
from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from memopt import preflight
from memopt.cli import from_command_line, validate
from memopt.config import CompareConfig, ConfigError, TrainConfig
from memopt.models import is_preset
from memopt.tracking import child_run, close_comparison, ensure_store, fail_mlflow_run, fail_run, open_comparison
from memopt.vocabulary import CONFIG_PARAM, Param
from tasks.data import tokenize
from tasks.evaluate import evaluate
from tasks.report import compare
from tasks.train import train


class ComparisonIncomplete(RuntimeError):
    pass


@flow(name="compare-optimizers")
def compare_optimizers(config: CompareConfig = CompareConfig()) -> dict[str, str]:  # noqa: B008 (its defaults, for the UI)
    """Train every method of `config` on the same model and data, evaluate each, and write the report.

    Returns each method's final status; raises ComparisonIncomplete if any method failed. Under `mlflow run`
    the run MLflow made (MLFLOW_RUN_ID) is the comparison's parent run.
    """
    log = get_run_logger()
    preflight.check(config)
    uri = config.resolved_tracking_uri()
    ensure_store(uri)
    client = MlflowClient(uri)
    mlflow_run_id = os.environ.get("MLFLOW_RUN_ID")
    parent = open_comparison(client, config, mlflow_run_id, flow_run.id)
    output = Path(config.output_dir)
    data_dir = tokenize(
        config.dataset,
        None if is_preset(config.model_name) else config.model_name,
        config.seq_len,
        str(output / "cache"),
        config.training.seed,
        parent_run_id=parent,
        tracking_uri=uri,
    )
    statuses = {method: train_and_evaluate(client, config, parent, method, data_dir) for method in config.methods}
    report = compare(uri, parent, str(output), config.register_model_name)
    log.info("report: %s", report)
    failed = sorted(m for m, s in statuses.items() if s != "FINISHED")
    close_comparison(client, parent, failed, end_parent=parent != mlflow_run_id)
    if failed:
        raise ComparisonIncomplete(f"not every method finished: {', '.join(failed)} failed (see {report})")
    return statuses


def train_and_evaluate(client: MlflowClient, config: CompareConfig, parent: str, method: str, data_dir: str) -> str:
    """One method in its child run (a finished one is skipped, an unfinished one continued); its final status."""
    log = get_run_logger()
    run = child_run(client, parent, method)
    run_id = run.info.run_id
    if run.info.status == "FINISHED":
        log.info("%s: already finished in run %s; skipped", method, run_id)
        return "FINISHED"
    if run.info.status != "RUNNING":
        client.update_run(run_id, status="RUNNING")
    uri = config.resolved_tracking_uri()
    train_cfg = TrainConfig(
        method=method,
        model_name=config.model_name,
        data_dir=data_dir,
        output_dir=str(Path(config.output_dir) / "runs" / parent / method),
        run_id=run_id,
        tracking_uri=uri,
        method_args=config.method_hyperparameters(method),
        training=config.training,
    )
    state = train.with_options(retries=config.retries, task_run_name=f"train-{method}")(train_cfg, return_state=True)
    if state.is_failed():
        reason = str(state.result(raise_on_failure=False))
        fail_run(client, run_id, reason)
        log.error("%s: FAILED: %s", method, reason)
        return "FAILED"
    steps = int(client.get_run(run_id).data.params[Param.TOTAL_STEPS])
    evaluate.with_options(task_run_name=f"evaluate-{method}")(
        state.result(), data_dir, run_id, uri, config.training.batch_size, steps
    )
    client.set_terminated(run_id, "FINISHED")
    return "FINISHED"


def parse_args(argv: list[str]) -> CompareConfig:
    return from_command_line(CompareConfig, argv, prog="python -m flows.compare", description=__doc__.split("\n")[0])


def resumed_config(cfg: CompareConfig) -> CompareConfig:
    """On --resume, the parent run's own configuration, so the comparison finishes as it began."""
    uri = cfg.resolved_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"no store at {uri} (reading it would create an empty one)")
    params = MlflowClient(uri).get_run(cfg.resume).data.params
    if CONFIG_PARAM not in params:
        raise ConfigError(f"--resume: run {cfg.resume} is not a memopt comparison (it has no {CONFIG_PARAM!r} param)")
    return validate(CompareConfig, {**json.loads(params[CONFIG_PARAM]), "resume": cfg.resume, "tracking_uri": cfg.tracking_uri})


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(sys.argv[1:] if argv is None else argv)
        if cfg.resume:
            try:
                cfg = resumed_config(cfg)
            except Exception as exc:  # noqa: BLE001 (any failure to read the run is the same user error)
                raise ConfigError(f"--resume: cannot read parent run {cfg.resume!r}: {exc}") from None
        preflight.check(cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        fail_mlflow_run(str(exc))
        return 2
    try:
        statuses = compare_optimizers(cfg)
    except ComparisonIncomplete as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(statuses))
    return 0


if __name__ == "__main__":
    sys.exit(main())
