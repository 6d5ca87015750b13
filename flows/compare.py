"""compare_optimizers: tokenize once, train and evaluate each method, report.

    python -m flows.compare --methods adamw,galore,blockllm --max_steps 200
    python -m flows.compare --resume PARENT_RUN_ID
    python -m flows.compare --help          # every parameter, declared in memopt/config.py

Exit codes: 0 every method finished; 1 at least one failed (the report lists
it with its reason); 2 bad input (nothing was started); 143 / 130 stopped by
SIGTERM (or a Prefect cancellation) / SIGINT, runs KILLED, checkpoints kept.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from mlflow import MlflowClient
from prefect import flow, get_run_logger
from prefect.exceptions import CancelledRun
from prefect.runtime import flow_run
from prefect.states import Cancelled

from flows.stopping import Stop, end_process_on_stop, stop_on_signals
from flows.stopping import current as current_stop
from memopt import preflight
from memopt.blocks import TokenizedData
from memopt.cli import from_command_line, validate
from memopt.config import CompareConfig, ConfigError, TrainConfig
from memopt.stopping import Stopped, raise_on_signals
from memopt.tracking import (child_run, close_comparison, ensure_store, fail_mlflow_run, fail_run, open_comparison,
                             reopen_run)
from memopt.vocabulary import CONFIG_PARAM, Param, Tag
from tasks.data import log_dataset_inputs, tokenize_for
from tasks.evaluate import evaluate
from tasks.report import compare
from tasks.train import train


class ComparisonIncomplete(RuntimeError):
    pass


@flow(name="compare-optimizers")
def compare_optimizers(config: CompareConfig = CompareConfig()) -> dict[str, str]:  # noqa: B008 (its defaults, for the UI)
    """Train every method of `config` on the same model and data, evaluate each, and write the report.

    Returns each method's final status; raises ComparisonIncomplete if any method failed. Under `mlflow run`
    the run MLflow made (MLFLOW_RUN_ID) is the comparison's parent run. SIGTERM, SIGINT or a cancellation stop it
    with its runs KILLED and its checkpoints kept (flows/stopping.py): the flow run ends Crashed or Cancelled.
    """
    try:
        with stop_on_signals(flow_run.id) as stop:
            return _compare(config, stop)
    except Stopped as exc:
        if stop.cancelled:
            return Cancelled(message=f"{exc.reason}: training stopped, MLflow runs ended KILLED, checkpoints kept")
        raise


def _compare(config: CompareConfig, stop: Stop) -> dict[str, str]:
    log = get_run_logger()
    preflight.check(config)
    data_dir = tokenize_for(config)  # first: whether the batch fits the data only its tokens tell, before any run exists
    uri = config.resolved_tracking_uri()
    ensure_store(uri)
    client = MlflowClient(uri)
    mlflow_run_id = os.environ.get("MLFLOW_RUN_ID")
    parent = open_comparison(client, config, mlflow_run_id, flow_run.id)
    stop.comparison = (client, parent)
    log_dataset_inputs(TokenizedData(Path(data_dir)), parent, uri)
    output = Path(config.output_dir)
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
    reopen_run(client, run)
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
        raise ConfigError(f"--resume: cannot read parent run {cfg.resume!r}: no store at {uri} (reading it would create "
                          "an empty one)")
    run = MlflowClient(uri).get_run(cfg.resume)
    params, tags = run.data.params, run.data.tags
    if CONFIG_PARAM not in params:
        if Tag.PARENT in tags:
            raise ConfigError(f"--resume: run {cfg.resume} is the {tags.get(Tag.METHOD, 'child')} run of comparison "
                              f"{tags[Tag.PARENT]}; resume the comparison: --resume {tags[Tag.PARENT]}")
        raise ConfigError(f"--resume: run {cfg.resume} is not a memopt comparison (it has no {CONFIG_PARAM!r} param)")
    return validate(CompareConfig, {**json.loads(params[CONFIG_PARAM]), "resume": cfg.resume, "tracking_uri": cfg.tracking_uri})


def main(argv: list[str] | None = None) -> int:
    try:
        with raise_on_signals():  # a Ctrl-C before the flow starts: nothing to end, no traceback
            cfg = checked_config(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        fail_mlflow_run(str(exc))
        return 2
    except Stopped as exc:
        return exc.exit_code
    end_process_on_stop()
    try:
        statuses = compare_optimizers(cfg)
    except ComparisonIncomplete as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (Stopped, CancelledRun) as exc:
        if (stop := current_stop()) is None:  # a signal as the flow ended, after its own handling
            return exc.exit_code if isinstance(exc, Stopped) else 128 + signal.SIGTERM
        stop.exit()  # 143 or 130, within the stop's deadline
    print(json.dumps(statuses))
    return 0


def checked_config(argv: list[str]) -> CompareConfig:
    """The configuration of the command line (or of the comparison --resume names), every check passed and the data
    tokenized: ConfigError otherwise."""
    cfg = parse_args(argv)
    if cfg.resume:
        try:
            cfg = resumed_config(cfg)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 (any failure to read the run is the same user error)
            raise ConfigError(f"--resume: cannot read parent run {cfg.resume!r}: {exc}") from None
    preflight.check(cfg)
    preflight.check_data(cfg)  # the flow's tokenize task will find the data ready
    return cfg


if __name__ == "__main__":
    sys.exit(main())
