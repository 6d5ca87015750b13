"""compare_optimizers: make the base model if the regime needs one, tokenize once, then for each method its
lr sweep, its seed runs and its result; report.

    python -m flows.compare --methods adamw,galore,blockllm --max_steps 200
    python -m flows.compare --regime pretrain --lr_grid 1e-3,3e-3,1e-2 --seeds 0,1,2
    python -m flows.compare --resume PARENT_RUN_ID
    python -m flows.compare --help          # every parameter, declared in memopt/config.py

Exit codes: 0 every method finished; 1 at least one failed (the report lists
it with its reason); 2 bad input (nothing was started); 143 / 130 stopped by
SIGTERM (or a Prefect cancellation) / SIGINT, runs KILLED, checkpoints kept.
"""
# No `from __future__ import annotations` here: `Flow.serve` pickles the flow into the process that runs each
# scheduled run, and there Prefect could not resolve the annotation "CompareConfig" of a string-annotated flow
# ("`Compare_OptimizersModel` is not fully defined"): every scheduled run failed.
import json
import os
import signal
import sys
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException
from prefect import flow, get_client, get_run_logger
from prefect.exceptions import CancelledRun
from prefect.runtime import flow_run
from prefect.states import Cancelled
from prefect.utilities.urls import url_for

from flows.method import Target, run_method
from flows.stopping import Stop, end_process_on_stop, stop_on_signals
from flows.stopping import current as current_stop
from memopt import preflight
from memopt.blocks import TokenizedData
from memopt.cli import from_command_line, validate
from memopt.config import CompareConfig, ConfigError, as_logged_before_regimes
from memopt.links import mlflow_ui, run_url
from memopt.stopping import Stopped, raise_on_signals
from memopt.tracking import close_comparison, ensure_store, fail_mlflow_run, fail_run, log_model, open_comparison
from memopt.vocabulary import CONFIG_PARAM, Tag
from tasks.base import BaseSpec, base_model, base_record
from tasks.data import log_dataset_inputs, tokenize_for
from tasks.report import compare


class ComparisonIncomplete(RuntimeError):
    pass


@flow(name="compare-optimizers")
def compare_optimizers(config: CompareConfig = CompareConfig()) -> dict[str, str]:  # noqa: B008 (its defaults, for the UI)
    """Train every method of `config` on the same model and data, evaluate each, and write the report.

    Returns each method's final status; raises ComparisonIncomplete if any method failed. Under `mlflow run`
    the run MLflow made (MLFLOW_RUN_ID) is the comparison's parent run when it is in the comparison's experiment.
    SIGTERM, SIGINT or a cancellation stop it with its runs KILLED and its checkpoints kept (flows/stopping.py): the
    flow run ends Crashed or Cancelled.
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
    # first: whether the batch fits the data only its tokens tell, before any run exists; a base model to make first
    # brings the tokenizer the task data is read with (preflight.check_data checked its own text meanwhile)
    data_dir = None if config.makes_base_model else tokenize_for(config)
    uri = config.resolved_tracking_uri()
    ensure_store(uri)
    client = MlflowClient(uri)
    tag_flow_run(config)
    mlflow_run_id = os.environ.get("MLFLOW_RUN_ID")
    # a link only to a server that outlives the flow run: the temporary one is gone when the flow ends
    parent = open_comparison(client, config, mlflow_run_id, (flow_run.id, url_for("flow-run", obj_id=flow_run.id) or ""))
    stop.comparison = (client, parent)
    client.set_tag(parent, Tag.REGIME, config.regime)
    ui = mlflow_ui(uri, config.mlflow_ui_url)
    parent_url = run_url(ui, client.get_run(parent).info.experiment_id, parent)
    log.info("MLflow parent run %r: %s", config.run_name(), parent_url)
    output = Path(config.output_dir)
    model_name = made_base_model(client, config, parent) if config.makes_base_model else config.model_name
    try:
        if data_dir is None:  # the task data in the base model's tokenizer, checked against the batch
            data_dir = tokenize_for(config, model_name)
        check_sweep_budget(config, len(TokenizedData(Path(data_dir)).blocks("train")))
    except ConfigError as exc:
        fail_run(client, parent, f"bad input: {exc}")
        raise
    log_dataset_inputs(TokenizedData(Path(data_dir)), parent, uri)
    target = Target(client, config, parent, model_name, data_dir, ui)
    statuses = {method: run_method(target, method) for method in config.methods}
    report = compare(uri, parent, str(output), parent_url, config.register_model_name)
    log.info("report: %s", report)
    failed = sorted(m for m, s in statuses.items() if s != "FINISHED")
    close_comparison(client, parent, failed, end_parent=parent != mlflow_run_id)
    if failed:
        raise ComparisonIncomplete(f"not every method finished: {', '.join(failed)} failed (see {report})")
    return statuses


def flow_run_tags(config: CompareConfig) -> list[str]:
    """What the Prefect UI can filter flow runs by: the methods, the model and the regime."""
    return [*(f"method:{m}" for m in config.methods), f"model:{Path(config.model_name).name}", f"regime:{config.regime}"]


def tag_flow_run(config: CompareConfig) -> None:
    with get_client(sync_client=True) as prefect:
        prefect.update_flow_run(flow_run.id, tags=sorted({*flow_run.tags, *flow_run_tags(config)}))


def made_base_model(client: MlflowClient, config: CompareConfig, parent: str) -> str:
    """The folder of the finetune regime's base model for the preset `config.model_name` (tasks/base.py):
    made now or found in the cache; named in the parent's tags."""
    spec = BaseSpec.of(config)
    uri = config.resolved_tracking_uri()
    # The folder is the cache; Prefect's record of it is refreshed whenever the folder is not complete.
    state = base_model.with_options(refresh_cache=base_record(spec.folder(config.output_dir)) is None)(
        spec, config.training, config.output_dir, parent, uri, config.retries, return_state=True)
    if state.is_failed():
        reason = f"the base model could not be made: {state.result(raise_on_failure=False)}"
        fail_run(client, parent, reason)
        raise ComparisonIncomplete(reason)
    record = base_record(state.result())
    model_id = record["model_id"]
    try:
        client.get_logged_model(model_id)
    except MlflowException:  # made for another store (same output folder): logged into this one, not trained again
        model_id = log_model(client, parent, record["model_dir"], name="base-model")
    client.log_batch(parent, tags=[RunTag(Tag.BASE_MODEL, record["model_dir"]), RunTag(Tag.BASE_MODEL_ID, model_id)])
    return record["model_dir"]


def check_sweep_budget(config: CompareConfig, n_train_blocks: int) -> None:
    """--sweep_steps against a budget given in epochs, which only the tokenized data's size tells."""
    if config.training.max_steps or not any(config.lr_grid_for(m) for m in config.methods):
        return  # a --max_steps budget was checked with the configuration
    steps = config.training.epochs * (n_train_blocks // config.training.global_batch_size)
    if config.sweep_steps >= steps:
        raise ConfigError(f"--sweep_steps: got {config.sweep_steps}; must be smaller than the budget, {config.training.epochs} "
                          f"epoch(s) of {n_train_blocks} blocks at {config.training.global_batch_size} per step = {steps} "
                          "steps (or 0 for no sweep)")


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
    logged = as_logged_before_regimes(json.loads(params[CONFIG_PARAM]))
    return validate(CompareConfig, {**logged, "resume": cfg.resume, "tracking_uri": cfg.tracking_uri})


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
    except ConfigError as exc:  # what only the tokenized data could tell (check_sweep_budget)
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
