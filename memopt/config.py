"""A comparison's parameters, checked before anything starts.

Each check names the parameter, the value and what is allowed; the first
failure raises `ConfigError`, and the command line turns it into one message
and exit code 2. Checks that touch nothing come first; the tracking store is
checked last, since reaching a sqlite store creates its file.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from memopt import optim
from memopt.distributed import check_launch_options
from memopt.options import check_training_options
from memopt.blocks import DEFAULT_VOCAB_SIZE
from memopt.data import DEFAULT_DATASET, DatasetError, check_dataset
from memopt.methods import pipeline_methods, recipe, run_hyperparameters
from memopt.models import PRESETS, build_model, is_preset, max_positions, preset_config

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow 3's own default store
CONFIG_PARAM = "config_json"  # the whole configuration, for --resume


class ConfigError(ValueError):
    pass


@dataclass
class CompareConfig:
    methods: list[str] = field(default_factory=lambda: ["adamw", "galore", "blockllm"])
    model_name: str = "llama-9m"
    dataset: str = DEFAULT_DATASET
    batch_size: int = 8
    epochs: int = 1
    max_steps: int = 0
    seq_len: int = 128
    lr: float | None = None
    eval_every: int = 50
    seed: int = 0
    output_dir: str = "./results"
    tracking_uri: str = ""
    rank: int | None = None  # every method with a `rank`; None: a quarter of the hidden size (the authors' ratio)
    sparsity: float | None = None  # every method with a `sparsity`; None: the method's default
    method_args: dict[str, dict[str, Any]] = field(default_factory=dict)  # {"galore": {"update_proj_gap": 50}}
    checkpoint_every: int = 50
    retries: int = 1
    resume: str | None = None  # a parent run id to finish
    # Beyond one process (memopt/options.py, memopt/distributed.py)
    total_batch_size: int = 0  # sequences per optimizer step; 0: batch_size × world size
    warmup_steps: int | None = None  # None: 10% of the steps
    dtype: str = "fp32"
    grad_clip: float = 0.0
    save_total_limit: int = 1
    metric_for_best_model: str = ""
    nproc_per_node: int = 1
    nnodes: int = 1
    rdzv_endpoint: str = ""
    system_metrics: bool = False  # MLflow's system metrics (CPU, memory, disk, network, GPU) in each child run

    def training_options(self) -> dict[str, Any]:
        """What the comparison hands to every training process beyond the basic fields."""
        names = ("total_batch_size", "warmup_steps", "dtype", "grad_clip", "save_total_limit", "metric_for_best_model",
                 "nproc_per_node", "nnodes", "rdzv_endpoint")
        return {k: getattr(self, k) for k in names}

    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI

    def as_params(self) -> dict[str, str]:
        """One param per field for the MLflow UI, plus the whole configuration as JSON for --resume."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("resume", "tracking_uri")}
        return {**{k: str(v) for k, v in fields.items()}, CONFIG_PARAM: json.dumps(fields)}

    def hidden_size(self) -> int | None:
        if is_preset(self.model_name):
            return PRESETS[self.model_name].hidden_size
        return None

    def method_hyperparameters(self, method: str) -> dict[str, Any]:
        """What this comparison overrides for `method`'s optimizer."""
        name = recipe(method).optimizer
        defaults = optim.spec(name).defaults
        hp: dict[str, Any] = {}
        if "rank" in defaults:
            if self.rank is not None:
                hp["rank"] = self.rank
            elif self.hidden_size():
                hp["rank"] = min(defaults["rank"], max(1, self.hidden_size() // 4))
        if "sparsity" in defaults and self.sparsity is not None:
            hp["sparsity"] = self.sparsity
        return {**hp, **self.method_args.get(method, {})}


def _positive_int(name: str, value: object, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"--{name}: got {value!r}; must be an integer >= {minimum}")


def validate(cfg: CompareConfig) -> None:
    if not cfg.methods:
        raise ConfigError(f"--methods: empty; choose from {', '.join(pipeline_methods())}")
    for m in cfg.methods:
        if m not in pipeline_methods():
            raise ConfigError(f"--methods: unknown method {m!r}; valid methods: {', '.join(pipeline_methods())}")
    repeated = sorted({m for m in cfg.methods if cfg.methods.count(m) > 1})
    if repeated:
        raise ConfigError(f"--methods: {', '.join(repeated)} given more than once; each method runs once")
    for name, minimum in (("batch_size", 1), ("epochs", 1), ("max_steps", 0), ("seq_len", 2), ("eval_every", 1),
                          ("seed", 0), ("checkpoint_every", 1), ("retries", 0)):
        _positive_int(name, getattr(cfg, name), minimum)
    if cfg.lr is not None and not (isinstance(cfg.lr, float | int) and 0 < cfg.lr < float("inf")):
        raise ConfigError(f"--lr: got {cfg.lr!r}; must be a number > 0")
    if cfg.rank is not None:
        _positive_int("rank", cfg.rank)
    if cfg.sparsity is not None and not (isinstance(cfg.sparsity, float | int) and 0 <= cfg.sparsity < 1):
        raise ConfigError(f"--sparsity: got {cfg.sparsity!r}; must be in [0, 1)")
    unknown = sorted(set(cfg.method_args) - set(cfg.methods))
    if unknown:
        raise ConfigError(f"--method_args: {', '.join(unknown)} not among --methods {','.join(cfg.methods)}")

    _validate_scaleout(cfg)
    _validate_model(cfg)
    try:
        check_dataset(cfg.dataset)
    except DatasetError as exc:
        raise ConfigError(f"--dataset: {exc}") from None
    _validate_output_dir(cfg.output_dir)
    _validate_tracking_uri(cfg.resolved_tracking_uri())


def _validate_scaleout(cfg: CompareConfig) -> None:
    try:
        check_launch_options(cfg.nproc_per_node, cfg.nnodes, cfg.rdzv_endpoint)
        check_training_options(
            batch_size=cfg.batch_size, total_batch_size=cfg.total_batch_size, world_size=cfg.nproc_per_node * cfg.nnodes,
            warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps, dtype=cfg.dtype, grad_clip=cfg.grad_clip,
            save_total_limit=cfg.save_total_limit, metric_for_best_model=cfg.metric_for_best_model,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _validate_model(cfg: CompareConfig) -> None:
    if is_preset(cfg.model_name):
        limit = preset_config(cfg.model_name).max_position_embeddings
    else:
        try:
            limit = max_positions(cfg.model_name)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"--model_name: cannot load a model config from {cfg.model_name!r} "
                f"(a preset: {', '.join(PRESETS)}; a save_pretrained folder; or a hub name): {exc}"
            ) from None
    if limit is not None and cfg.seq_len > limit:
        raise ConfigError(f"--seq_len: got {cfg.seq_len}; model {cfg.model_name!r} allows at most {limit} positions")
    if not is_preset(cfg.model_name):
        return
    # Every optimizer checks its own hyperparameters; build each on a weightless (meta) copy of the model.
    with torch.device("meta"):
        model = build_model(cfg.model_name, vocab_size=DEFAULT_VOCAB_SIZE)
    for method in cfg.methods:
        try:
            name = recipe(method).optimizer
            facts = run_hyperparameters(name, total_steps=max(1, cfg.max_steps), accumulation_steps=1)  # checked for real in training
            optim.build(name, model, **{**facts, **cfg.method_hyperparameters(method)})
        except ValueError as exc:
            raise ConfigError(f"--methods {method}: {exc}") from None
        except TypeError as exc:  # a value of the wrong type, e.g. adamw.eps='x': the optimizer compares it
            raise ConfigError(
                f"--method_args {method}: {cfg.method_args.get(method, {})} has a value of the wrong type ({exc}); "
                f"defaults: {optim.spec(recipe(method).optimizer).defaults}"
            ) from None
        except (NotImplementedError, RuntimeError):
            pass  # this optimizer needs real tensors to build; the training process checks it


def _validate_output_dir(output_dir: str) -> None:
    path = Path(output_dir).resolve()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--output_dir: {output_dir!r} cannot be written ({existing} is not a writable folder)")
    try:  # os.access says yes to root everywhere; a read-only mount or /proc says no only when written
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as exc:
        raise ConfigError(f"--output_dir: {output_dir!r} cannot be written ({existing}: {exc.strerror})") from None


def _validate_tracking_uri(uri: str) -> None:
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).read()
        except (urllib.error.URLError, OSError) as exc:
            raise ConfigError(f"--tracking_uri: {uri} does not answer ({exc})") from None
    elif uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        folder = db.resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise ConfigError(f"--tracking_uri: {uri}: folder {folder} does not exist or cannot be written")
    elif uri.startswith("file:") or "://" not in uri:
        raise ConfigError(f"--tracking_uri: {uri}: use sqlite:///PATH.db or http://HOST:PORT (the file store is retired)")
