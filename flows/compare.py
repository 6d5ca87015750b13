"""compare_optimizers: make the base model if the regime needs one, tokenize once, then for each method its
lr sweep, its seed runs and its result; report.

    python -m flows.compare --methods adamw,galore,blockllm --max_steps 200
    python -m flows.compare --regime pretrain --lr_grid 1e-3,3e-3,1e-2 --seeds 0,1,2
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
from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException
from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.method import Target, run_method
from memopt import preflight
from memopt.blocks import TokenizedData
from memopt.cli import from_command_line, validate
from memopt.config import CompareConfig, ConfigError, as_logged_before_regimes
from memopt.models import is_preset
from memopt.tracking import close_comparison, ensure_store, fail_mlflow_run, fail_run, log_transformers_model, open_comparison
from memopt.vocabulary import CONFIG_PARAM, Tag
from tasks.base import BaseSpec, base_model, base_record
from tasks.data import tokenize
from tasks.report import compare


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
    client.set_tag(parent, Tag.REGIME, config.regime)
    output = Path(config.output_dir)
    model_name = made_base_model(client, config, parent) if config.makes_base_model else config.model_name
    data_dir = tokenize(
        config.dataset,
        None if is_preset(model_name) else model_name,  # a pretrained model reads the data with its own tokenizer
        config.seq_len,
        str(output / "cache"),
        config.training.seed,
        parent_run_id=parent,
        tracking_uri=uri,
    )
    try:
        check_sweep_budget(config, len(TokenizedData(Path(data_dir)).blocks("train")))
    except ConfigError as exc:
        fail_run(client, parent, f"bad input: {exc}")
        raise
    target = Target(client, config, parent, model_name, data_dir)
    statuses = {method: run_method(target, method) for method in config.methods}
    report = compare(uri, parent, str(output))
    log.info("report: %s", report)
    failed = sorted(m for m, s in statuses.items() if s != "FINISHED")
    close_comparison(client, parent, failed, end_parent=parent != mlflow_run_id)
    if failed:
        raise ComparisonIncomplete(f"not every method finished: {', '.join(failed)} failed (see {report})")
    return statuses


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
        model_id = log_transformers_model(client, parent, record["model_dir"], name="base-model")
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
        raise ConfigError(f"no store at {uri} (reading it would create an empty one)")
    params = MlflowClient(uri).get_run(cfg.resume).data.params
    if CONFIG_PARAM not in params:
        raise ConfigError(f"--resume: run {cfg.resume} is not a memopt comparison (it has no {CONFIG_PARAM!r} param)")
    logged = as_logged_before_regimes(json.loads(params[CONFIG_PARAM]))
    return validate(CompareConfig, {**logged, "resume": cfg.resume, "tracking_uri": cfg.tracking_uri})


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
    except ConfigError as exc:  # what only the tokenized data could tell (check_sweep_budget)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ComparisonIncomplete as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(statuses))
    return 0


if __name__ == "__main__":
    sys.exit(main())
