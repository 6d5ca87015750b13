"""compare_optimizers: tokenize once, train and evaluate each method, report.

    python -m flows.compare --methods adamw,galore,blockllm --max_steps 200
    python -m flows.compare --resume PARENT_RUN_ID

Exit codes: 0 every method finished; 1 at least one failed (the report lists
it with its reason); 2 bad input (nothing was started).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from pathlib import Path

from mlflow import MlflowClient
from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from memopt.config import CONFIG_PARAM, CompareConfig, ConfigError, validate
from memopt.data import DEFAULT_DATASET
from memopt.methods import recipe
from memopt.models import is_preset
from memopt.tracking import child_run, child_runs, ensure_store, open_parent_run
from memopt.train import FAILURE_TAG, TrainConfig
from tasks.data import tokenize
from tasks.evaluate import evaluate
from tasks.report import compare
from tasks.train import train

RESUMED_PARENT_TAG = "memopt.resumed_parent"
FAILED_METHODS_TAG = "memopt.failed_methods"
PREFECT_FLOW_RUN_TAG = "memopt.prefect_flow_run_id"


class ComparisonIncomplete(RuntimeError):
    pass


@flow(name="compare-optimizers")
def compare_optimizers(
    methods: list[str] = ["adamw", "galore", "blockllm"],  # noqa: B006 (Prefect shows it as the default)
    model_name: str = "llama-9m",
    dataset: str = DEFAULT_DATASET,
    batch_size: int = 8,
    epochs: int = 1,
    max_steps: int = 0,
    seq_len: int = 128,
    lr: float | None = None,
    eval_every: int = 50,
    seed: int = 0,
    output_dir: str = "./results",
    tracking_uri: str = "",
    rank: int | None = None,
    sparsity: float | None = None,
    method_args: dict[str, dict] | None = None,
    checkpoint_every: int = 50,
    retries: int = 1,
    resume: str | None = None,
    total_batch_size: int = 0,
    warmup_steps: int | None = None,
    dtype: str = "fp32",
    grad_clip: float = 0.0,
    save_total_limit: int = 1,
    metric_for_best_model: str = "",
    nproc_per_node: int = 1,
    nnodes: int = 1,
    rdzv_endpoint: str = "",
    system_metrics: bool = False,
    parent_run_id: str | None = None,
) -> dict[str, str]:
    """Returns each method's final status. Raises ComparisonIncomplete if any method failed."""
    cfg = CompareConfig(**{k: v for k, v in locals().items() if k != "parent_run_id"})
    log = get_run_logger()
    cfg.method_args = cfg.method_args or {}
    validate(cfg)
    uri = cfg.resolved_tracking_uri()
    ensure_store(uri)
    client = MlflowClient(uri)
    parent = open_parent_run(client, cfg.resume or parent_run_id, run_name="compare")
    if cfg.resume and parent_run_id and parent_run_id != parent:
        # `mlflow run -P resume=ID` made a run of its own before this code ran: it stays a pointer to the
        # comparison it finishes (this tag), and `mlflow run` ends it from our exit code.
        client.set_tag(parent_run_id, RESUMED_PARENT_TAG, parent)
    client.log_batch(parent, params=[])  # fail early if the parent is not writable
    if flow_run.id:  # from the MLflow run to the Prefect flow run (task states, retries, logs); a resume updates it
        client.set_tag(parent, PREFECT_FLOW_RUN_TAG, flow_run.id)
    existing = client.get_run(parent).data.params
    for key, value in cfg.as_params().items():
        if key not in existing:
            client.log_param(parent, key, value)

    output = Path(cfg.output_dir)
    data_dir = tokenize(
        cfg.dataset,
        None if is_preset(cfg.model_name) else cfg.model_name,
        cfg.seq_len,
        str(output / "cache"),
        cfg.seed,
        parent_run_id=parent,
        tracking_uri=uri,
    )

    statuses: dict[str, str] = {}
    for method in cfg.methods:
        run = child_run(client, parent, method)
        run_id = run.info.run_id
        if run.info.status == "FINISHED":
            log.info("%s: already finished in run %s; skipped", method, run_id)
            statuses[method] = "FINISHED"
            continue
        if run.info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
        train_cfg = TrainConfig(
            method=method,
            model_name=cfg.model_name,
            data_dir=data_dir,
            output_dir=str(output / "runs" / parent / method),
            run_id=run_id,
            tracking_uri=uri,
            batch_size=cfg.batch_size,
            epochs=cfg.epochs,
            max_steps=cfg.max_steps,
            lr=cfg.lr,
            eval_every=cfg.eval_every,
            checkpoint_every=cfg.checkpoint_every,
            seed=cfg.seed,
            method_args=cfg.method_hyperparameters(method),
            **cfg.training_options(),
            system_metrics=cfg.system_metrics,
        )
        state = train.with_options(retries=cfg.retries, task_run_name=f"train-{method}")(train_cfg, return_state=True)
        if state.is_failed():
            reason = str(state.result(raise_on_failure=False))
            client.set_tag(run_id, FAILURE_TAG, reason[:5000])
            client.set_terminated(run_id, "FAILED")
            log.error("%s: FAILED: %s", method, reason)
            statuses[method] = "FAILED"
            continue
        steps = int(client.get_run(run_id).data.params["total_steps"])
        evaluate.with_options(task_run_name=f"evaluate-{method}")(
            state.result(), data_dir, run_id, uri, cfg.batch_size, steps
        )
        client.set_terminated(run_id, "FINISHED")
        statuses[method] = "FINISHED"

    report = compare(uri, parent, str(output))
    log.info("report: %s", report)
    failed = sorted(m for m, s in statuses.items() if s != "FINISHED")
    if failed:
        client.set_tag(parent, FAILED_METHODS_TAG, ",".join(failed))
    elif FAILED_METHODS_TAG in client.get_run(parent).data.tags:
        client.delete_tag(parent, FAILED_METHODS_TAG)  # a resume finished what an earlier attempt failed
    if parent != parent_run_id:  # a run made by `mlflow run` is ended by mlflow run, from our exit code
        client.set_terminated(parent, "FAILED" if failed else "FINISHED")
    if failed:
        raise ComparisonIncomplete(f"not every method finished: {', '.join(failed)} failed (see {report})")
    return statuses


def _optional(kind):
    """argparse type: '' (what an MLproject passes for 'no value') means None."""
    def parse(text: str):
        return None if text in ("", "None", "none") else kind(text)
    parse.__name__ = kind.__name__
    return parse


def _number(kind):
    """argparse type: a number, or one line naming what is allowed (argparse's own says only 'invalid int value')."""
    what = {int: "an integer", float: "a number"}[kind]

    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"got {text!r}; must be {what}") from None
    parse.__name__ = kind.__name__
    return parse


def _top_level_split(text: str) -> list[str]:
    """Split on commas outside brackets and quotes, so `adamw.betas=(0.9,0.95)` stays one item."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def _flag(text: str) -> bool:
    """argparse type for a boolean that an MLproject can pass as a string."""
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no", ""):
        raise argparse.ArgumentTypeError(f"{text!r} is not true or false")
    return value in ("true", "1", "yes")


def _method_args(text: str) -> dict[str, dict]:
    """`galore.update_proj_gap=50,blockllm.patience=20` -> {"galore": {"update_proj_gap": 50}, ...}."""
    result: dict[str, dict] = {}
    for item in filter(None, (part.strip() for part in _top_level_split(text))):
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or not method or not name:
            raise argparse.ArgumentTypeError(f"{item!r} is not METHOD.NAME=VALUE")
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        result.setdefault(method, {})[name] = parsed
    return result


class _Parser(argparse.ArgumentParser):
    """Every command-line error is a ConfigError: one line naming the parameter, exit 2, no usage dump."""

    def error(self, message: str):
        raise ConfigError(message.removeprefix("argument "))


def parse_args(argv: list[str]) -> CompareConfig:
    d = CompareConfig()
    p = _Parser(prog="python -m flows.compare", description=__doc__.split("\n")[0])
    p.add_argument("--methods", default=",".join(d.methods), help="comma-separated method names")
    p.add_argument("--model_name", default=d.model_name, help="a preset (llama-micro ... llama-13b, qwen2-0.5b, qwen2-1b, qwen2-7b), a save_pretrained folder or a hub name")
    p.add_argument("--dataset", default=d.dataset, help="the embedded default, a hub name, or a local file/folder")
    p.add_argument("--batch_size", type=_number(int), default=d.batch_size)
    p.add_argument("--epochs", type=_number(int), default=d.epochs)
    p.add_argument("--max_steps", type=_number(int), default=d.max_steps, help="> 0 overrides --epochs")
    p.add_argument("--seq_len", type=_number(int), default=d.seq_len)
    p.add_argument("--lr", type=_optional(_number(float)), default=None, help="one learning rate for every method (default: each method's own)")
    p.add_argument("--eval_every", type=_number(int), default=d.eval_every)
    p.add_argument("--seed", type=_number(int), default=d.seed)
    p.add_argument("--output_dir", default=d.output_dir)
    p.add_argument("--tracking_uri", default="", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    p.add_argument("--rank", type=_optional(_number(int)), default=None, help="rank of every low-rank method (default: hidden size / 4, at most 128)")
    p.add_argument("--sparsity", type=_optional(_number(float)), default=None, help="BlockLLM's sparsity (default 0.9)")
    p.add_argument("--method_args", type=_method_args, default={}, help="METHOD.NAME=VALUE,... e.g. galore.update_proj_gap=50")
    p.add_argument("--checkpoint_every", type=_number(int), default=d.checkpoint_every)
    p.add_argument("--retries", type=_number(int), default=d.retries, help="Prefect retries of a failed training process")
    p.add_argument("--resume", type=_optional(str), default=None, help="finish the comparison of this MLflow parent run id")
    g = p.add_argument_group("training options and scale-out (README: Scaling out)")
    g.add_argument("--total_batch_size", type=int, default=d.total_batch_size,
                   help="sequences per optimizer step; gradient accumulation = it / (batch_size x world size); 0: none")
    g.add_argument("--warmup_steps", type=_optional(int), default=None, help="LR warm-up steps (default: 10%% of the steps)")
    g.add_argument("--dtype", default=d.dtype, help="the weights' dtype: fp32 or bf16")
    g.add_argument("--grad_clip", type=float, default=d.grad_clip, help="max total gradient norm; 0: no clipping")
    g.add_argument("--save_total_limit", type=int, default=d.save_total_limit, help="checkpoints kept per method")
    g.add_argument("--metric_for_best_model", default=d.metric_for_best_model,
                   help="val_loss or val_perplexity: the best evaluation's model is the final one (default: the last)")
    g.add_argument("--nproc_per_node", type=int, default=d.nproc_per_node, help="> 1: DDP through torchrun, one process per GPU")
    g.add_argument("--nnodes", type=int, default=d.nnodes, help="machines taking part (each runs the same torchrun)")
    g.add_argument("--rdzv_endpoint", default=d.rdzv_endpoint, help="HOST:PORT of the first node (with --nnodes > 1)")
    p.add_argument("--system_metrics", type=_flag, nargs="?", const=True, default=False,
                   help="log MLflow's system metrics (system/...) in each child run; also --system_metrics true|false")
    a = p.parse_args(argv)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    return CompareConfig(**{**vars(a), "methods": methods})


def resumed_config(cfg: CompareConfig) -> CompareConfig:
    """On --resume, the parent run's own configuration, so the comparison finishes as it began."""
    uri = cfg.resolved_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"no store at {uri} (reading it would create an empty one)")
    params = MlflowClient(uri).get_run(cfg.resume).data.params
    if CONFIG_PARAM not in params:
        raise ConfigError(f"--resume: run {cfg.resume} is not a memopt comparison (it has no {CONFIG_PARAM!r} param)")
    return CompareConfig(**{**json.loads(params[CONFIG_PARAM]), "resume": cfg.resume, "tracking_uri": cfg.tracking_uri})


def _fail_mlflow_run(reason: str) -> None:
    """Bad input under `mlflow run`: MLflow made the parent run before this code ran. End it FAILED with
    the reason, so that no run is left RUNNING. Not deleted: `mlflow run` sets the run FAILED itself
    afterwards (its "already terminated?" check compares a string status with ints, so it always does),
    and on a deleted run that raises, burying our message under a traceback. Empty FAILED runs are
    what `mlflow gc` / the UI's delete are for."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    try:
        client = MlflowClient(os.environ.get("MLFLOW_TRACKING_URI"))
        client.set_tag(run_id, FAILURE_TAG, f"bad input: {reason}"[:5000])
        client.set_terminated(run_id, "FAILED")
    except Exception as exc:  # noqa: BLE001 (the store itself may be what is wrong; the error above says so)
        print(f"note: could not end the run {run_id} that mlflow run created: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    try:
        cfg = parse_args(sys.argv[1:] if argv is None else argv)
        if cfg.resume:
            try:
                cfg = resumed_config(cfg)
            except Exception as exc:  # noqa: BLE001 (any failure to read the run is the same user error)
                raise ConfigError(f"--resume: cannot read parent run {cfg.resume!r}: {exc}") from None
        validate(cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        _fail_mlflow_run(str(exc))
        return 2
    try:
        statuses = compare_optimizers(**vars(cfg), parent_run_id=os.environ.get("MLFLOW_RUN_ID"))
    except ComparisonIncomplete as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(statuses))
    return 0


if __name__ == "__main__":
    sys.exit(main())
