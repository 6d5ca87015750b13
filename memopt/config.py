"""A comparison's configuration, declared once.

Each parameter is one pydantic field: its type, bounds, default and one-line
description. Everything else is derived from these classes:
- the command line (memopt/cli.py, through pydantic-settings);
- the Prefect flow's one parameter, whose run form shows the descriptions and bounds;
- the MLflow params of a comparison (`as_params`) and its `config_json`, which
  `--resume` reads back;
- the training process's configuration file (`TrainConfig`);
- the README's parameter table (`python -m memopt.cli --readme README.md`
  rewrites it; a test checks it is current).

`TrainingOptions` are what every method's training process reads: the
comparison holds one and hands that same object to each process. A flat
mapping (`{"batch_size": 4}`) is accepted wherever a configuration with
`training` is, which is how the short flags (`--batch_size` for
`--training.batch_size`) and configurations logged before the options were
nested both arrive.

Every error comes out through `memopt.cli.describe_error`: one line, `--NAME:
got VALUE; must be ...`, which the command line prints with exit code 2. The checks that
need the outside world (model, dataset, folders, tracking store) are in
memopt/preflight.py.
"""
from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from memopt import optim
from memopt.data import DEFAULT_BASE_DATASET, DEFAULT_DATASET
from memopt.distributed import check_launch_options
from memopt.fieldtypes import LrGrid, MethodArgs, MethodLrGrids, MethodNames, Seeds, check_given_once, check_lr_grid
from memopt.methods import grad_accum_steps, pipeline_methods, recipe
from memopt.models import PRESETS, is_preset
from memopt.options import BEST_METRICS, NOT_DURING_TRAINING
from memopt.vocabulary import EXPERIMENT
from memopt.regimes import Regime, regime_hyperparameters

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow 3's own default store
# Every integer has an upper bound: what MLflow (a step is a 64-bit integer) and torch (sizes, generator seeds) can hold.
INT64_MAX = 2**63 - 1
SEED_MAX = 2**32 - 1  # the batch order's generator is seeded with seed × 100003 + epoch, which must fit in 64 bits
WHY_BOUND = {INT64_MAX: "the largest 64-bit integer: MLflow's steps and torch's sizes are 64-bit", SEED_MAX: "a 32-bit seed"}


class ConfigError(ValueError):
    """Bad input: one line naming the parameter; the command line exits 2."""


class Section(BaseModel):
    """A group of parameters: unknown keys are errors, and "" means "the default" (what an MLproject
    parameter or a form field left empty sends)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_means_default(cls, data: Any) -> Any:
        if isinstance(data, dict):
            # not for a list: `--methods ''` names no method, and says so
            scalar = {k for k, f in cls.model_fields.items()
                      if not f.is_required() and not isinstance(f.get_default(call_default_factory=True), list)}
            data = {k: v for k, v in data.items() if not (k in scalar and isinstance(v, str) and v == "")}
        return data


class TrainingOptions(Section):
    """Training options shared by every method (memopt/options.py explains the batch geometry)."""

    batch_size: int = Field(8, ge=1, le=INT64_MAX, description="sequences each process runs forward at once")
    total_batch_size: int = Field(
        0, ge=0, le=INT64_MAX, description="sequences per optimizer step; gradient accumulation = "
        "it / (batch_size × world size), which must divide it; 0: no accumulation")
    epochs: int = Field(1, ge=1, le=INT64_MAX, description="passes over the training split")
    max_steps: int = Field(0, ge=0, le=INT64_MAX,
                           description="exactly this many optimizer steps, overriding epochs (0: epochs decide)")
    lr: float | None = Field(None, gt=0, allow_inf_nan=False,
                             description="one learning rate for every method (unset: each method's own)")
    warmup_steps: int | None = Field(None, ge=0, le=INT64_MAX, description="LR warm-up steps of the cosine schedule "
                                     "(unset: warmup_ratio of the steps)")
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="the warm-up's share of the steps when warmup_steps is not given")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="the cosine schedule's last learning rate, as a share of the peak")
    grad_clip: float = Field(0.0, ge=0, allow_inf_nan=False,
                             description="max total gradient norm (0: off); grad_norm is logged before clipping")
    dtype: typing.Literal["fp32", "bf16"] = Field(
        "fp32", description="the weights' dtype (autocast is the adamw-amp recipe's, independent of this)")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="data, model init and every random choice")
    eval_every: int = Field(50, ge=1, le=INT64_MAX, description="steps between validation losses")
    eval_batches: int = Field(8, ge=1, le=INT64_MAX, description="validation batches per evaluation while training "
                              "(the final evaluation reads the whole split)")
    progress_every: int = Field(10, ge=1, le=INT64_MAX, description="steps between progress lines (train loss, "
                                "tokens/s, time left) in the log and the Prefect progress artifact")
    checkpoint_every: int = Field(50, ge=1, le=INT64_MAX, description="steps between checkpoints")
    save_total_limit: int = Field(1, ge=1, le=INT64_MAX, description="checkpoints kept per method")
    metric_for_best_model: str = Field(
        "", description="val_loss or val_perplexity: the best evaluation's model is the final, logged one "
        "(unset: the last model)")
    nproc_per_node: int = Field(1, ge=1, le=INT64_MAX, description="processes per machine; above 1 each method trains "
                                "with DDP through torchrun, "
                                "one process per GPU (gloo on CPU)")
    nnodes: int = Field(1, ge=1, le=INT64_MAX,
                        description="machines taking part, each running the same torchrun (README: Scaling out)")
    rdzv_endpoint: str = Field("", description="HOST:PORT of the first node, with nnodes > 1")
    memory_interval_s: float = Field(0.1, gt=0, allow_inf_nan=False, description="seconds between memory (RSS) samples")
    system_metrics: bool = Field(False, description="MLflow's system metrics (system/cpu_utilization_percentage, "
                                 "memory, disk, network; GPU where present) in each child run")
    system_metrics_interval_s: float = Field(10.0, gt=0, allow_inf_nan=False,
                                             description="seconds between system-metrics samples")

    @field_validator("metric_for_best_model")
    @classmethod
    def _best_metric(cls, value: str) -> str:
        if value and value not in BEST_METRICS:
            why = " (it is measured once, on the final model, by the evaluate task)" if value in NOT_DURING_TRAINING else ""
            raise ValueError(f"got {value!r}{why}; must be empty (the last model) or one of {', '.join(BEST_METRICS)}")
        return value

    @model_validator(mode="after")
    def _geometry(self) -> "TrainingOptions":
        if self.total_batch_size:
            per_step = self.batch_size * self.world_size
            if self.total_batch_size % per_step:
                raise ValueError(
                    f"--total_batch_size: got {self.total_batch_size}; must be a multiple of --batch_size × world size = "
                    f"{self.batch_size} × {self.world_size} = {per_step} (the gradient accumulation steps are derived from it)"
                )
        if self.warmup_steps is not None and self.max_steps and self.warmup_steps > self.max_steps:
            raise ValueError(f"--warmup_steps: got {self.warmup_steps}; must be at most --max_steps {self.max_steps}")
        check_launch_options(self.nproc_per_node, self.nnodes, self.rdzv_endpoint)
        return self

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @property
    def accumulation_steps(self) -> int:
        return self.total_batch_size // (self.batch_size * self.world_size) if self.total_batch_size else 1

    @property
    def global_batch_size(self) -> int:
        """Sequences per optimizer step."""
        return self.batch_size * self.world_size * self.accumulation_steps


class WithTraining(Section):
    """A configuration that holds the training options; accepts them flat as well as nested."""

    training: TrainingOptions = Field(default_factory=TrainingOptions, description="training options shared by every method")

    @model_validator(mode="before")
    @classmethod
    def _lift_flat_training_options(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not set(data) & set(TrainingOptions.model_fields):
            return data
        nested = data.get("training", {})
        nested = nested.model_dump(exclude_unset=True) if isinstance(nested, TrainingOptions) else dict(nested)
        flat = {k: v for k, v in data.items() if k in TrainingOptions.model_fields}
        rest = {k: v for k, v in data.items() if k not in TrainingOptions.model_fields}
        return {**rest, "training": {**nested, **flat}}  # a flat key is the more explicit: it wins


class CompareConfig(WithTraining):
    """One comparison: which methods, on which model and data, with which training options."""

    methods: MethodNames = Field(["adamw", "galore", "blockllm"], description="comma-separated method names (README: Methods)")
    model_name: str = Field(
        "llama-9m", description="a preset (llama-micro, llama-9m … llama-13b, qwen2-0.5b, qwen2-1b, qwen2-7b; random init), "
        "a save_pretrained folder, or a hub name (distilgpt2): pretrained ones are fine-tuned")
    dataset: str = Field(
        DEFAULT_DATASET, description="the embedded default (generated offline from the seed, MATH-500's columns "
        "problem/solution/answer), a hub name, a local json/jsonl/txt/csv/parquet file or folder, or a save_to_disk folder")
    seq_len: int = Field(128, ge=2, le=INT64_MAX, description="tokens per sequence")
    output_dir: str = Field("./results", description="report, checkpoints, models and the token cache")
    tracking_uri: str = Field("", description="an MLflow store: sqlite:///PATH.db or a tracking server http(s)://HOST:PORT "
                              "(unset: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    experiment: str = Field(EXPERIMENT, min_length=1, description="the MLflow experiment of the comparison's runs "
                            "(make run passes it to mlflow run as well)")
    mlflow_ui_url: str = Field("", description="the MLflow UI that links in logs and artifacts point to (unset: the "
                               "tracking server itself, else http://127.0.0.1:5000, where the README's MLflow UI serves a local store)")
    rank: int | None = Field(None, ge=1, le=INT64_MAX, description="rank of every low-rank method (unset: hidden size / 4, at most "
                             "the method's own, 128 for the 512-wide llama-60m: the authors' ratio)")
    sparsity: float | None = Field(None, ge=0, lt=1, description="every method with a sparsity, BlockLLM's share of "
                                   "elements left out (unset: the method's own, 0.9)")
    method_args: MethodArgs = Field(default_factory=dict, description="any other hyperparameter, METHOD.NAME=VALUE,... "
                                    "e.g. galore.update_proj_gap=50,blockllm.patience=20")
    retries: int = Field(1, ge=0, le=INT64_MAX,
                         description="Prefect retries of a failed training process (each resumes from its last checkpoint)")
    regime: Regime = Field(
        "finetune", description="pretrain: the model's architecture from random init; finetune: a pretrained model "
        "adapted to the data (a preset's base is made first: base_*). Each method takes its authors' defaults for it")
    lr_grid: LrGrid = Field([1e-3, 3e-3, 1e-2], description="learning rates every method's sweep tries, the "
                            "baseline's included; the best trial's lr trains the seeds")
    method_lr_grid: MethodLrGrids = Field(default_factory=dict, description="a method's own grid instead of lr_grid, "
                                          "METHOD=[LR,...],... e.g. blockllm=[3e-3,1e-2]")
    sweep_steps: int = Field(25, ge=0, le=INT64_MAX, description="optimizer steps of each sweep trial, fewer than the budget (0: no "
                             "sweep: the method's own lr); a method given an lr (--lr, METHOD.lr) is not swept")
    sweep_workers: int = Field(2, ge=1, le=INT64_MAX, description="sweep trials trained at once (a trial's loss does not depend on it; "
                               "1 where memory or the accelerator is short; 1 under torchrun); seed runs always train one at a time")
    seeds: Seeds = Field([], description="seeds of each method's final runs, e.g. 0,1,2: the report gives mean ± std "
                         "over them (unset: --seed alone; the data always comes from --seed)")
    base_dataset: str = Field(DEFAULT_BASE_DATASET, description="finetune with a preset: the text its base model is "
                              "pretrained on (the embedded default: general English, not the task), any --dataset form")
    base_steps: int = Field(150, ge=0, le=INT64_MAX, description="finetune with a preset: AdamW steps that pretrain its base model "
                            "(made once, cached by what it depends on; 0: none, so model_name must be pretrained)")
    base_lr: float = Field(3e-3, gt=0, allow_inf_nan=False, description="finetune with a preset: the base model's AdamW lr")
    resume: str | None = Field(None, description="a parent run id: finish that comparison, with its own parameters")
    register_model_name: str = Field(
        "", description="a name in the MLflow model registry: the best method's model (lowest final validation "
        "loss) becomes its newest version (unset: nothing registered)")

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: list[str]) -> list[str]:
        valid = pipeline_methods()
        if not methods:
            raise ValueError(f"empty; choose from {', '.join(valid)}")
        for m in methods:
            if m not in valid:
                raise ValueError(f"unknown method {m!r}; valid methods: {', '.join(valid)}")
        check_given_once(methods, why="; each method runs once")
        return methods

    @field_validator("mlflow_ui_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError(f"got {value!r}; must be empty or an http(s):// address")
        return value.rstrip("/")

    @field_validator("lr_grid")
    @classmethod
    def _lr_grid(cls, grid: list[float]) -> list[float]:
        return check_lr_grid(grid)

    @field_validator("method_lr_grid")
    @classmethod
    def _method_lr_grids(cls, grids: dict[str, list[float]]) -> dict[str, list[float]]:
        for method, grid in grids.items():
            check_lr_grid(grid, f"{method}: ")
        return grids

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        outside = [s for s in seeds if not 0 <= s <= SEED_MAX]
        if outside:
            raise ValueError(f"got {outside[0]}; every seed must be an integer from 0 to {SEED_MAX} ({WHY_BOUND[SEED_MAX]})")
        check_given_once(seeds, why="; each seed runs once")
        return seeds

    @field_validator("register_model_name")
    @classmethod
    def _registry_name(cls, value: str) -> str:
        if value:
            from mlflow.exceptions import MlflowException
            from mlflow.utils.validation import _validate_model_name  # MLflow's own rule, so the two cannot drift

            try:
                _validate_model_name(value)
            except MlflowException as exc:
                raise ValueError(f"got {value!r}; must be a name MLflow's registry accepts ({exc.message})") from None
        return value

    @model_validator(mode="after")
    def _method_args_name_methods(self) -> "CompareConfig":
        for name, given in (("method_args", self.method_args), ("method_lr_grid", self.method_lr_grid)):
            unknown = sorted(set(given) - set(self.methods))
            if unknown:
                raise ValueError(f"--{name}: {', '.join(unknown)} not among --methods {','.join(self.methods)}")
        return self

    @model_validator(mode="after")
    def _one_backward_per_step(self) -> "CompareConfig":
        """A method that updates inside its own backward (MethodSpec.owns_backward: AdaLomo) needs exactly one
        backward per optimizer step, on one process, and leaves no gradients behind."""
        t = self.training
        for method in self.methods:
            r = recipe(method)
            if not optim.spec(r.optimizer).owns_backward:
                continue
            passes = t.accumulation_steps * grad_accum_steps(r, t.batch_size)
            if passes > 1:
                raise ValueError(f"--methods {method}: updates inside its backward, one backward per optimizer step; "
                                 f"--total_batch_size {t.total_batch_size} asks for {passes} (use 0)")
            if t.world_size > 1:
                raise ValueError(f"--methods {method}: updates inside its backward, before DDP could average the "
                                 "gradients; run it with nproc_per_node × nnodes = 1")
            if t.grad_clip > 0:
                raise ValueError(f"--methods {method}: leaves no gradients for --grad_clip to clip; use --method_args "
                                 f"{method}.clip_grad_norm={t.grad_clip:g} (its own two-pass clipping)")
        return self

    @model_validator(mode="after")
    def _sweep_and_regime(self) -> "CompareConfig":
        budget = self.training.max_steps
        if budget and any(self.lr_grid_for(m) for m in self.methods) and self.sweep_steps >= budget:
            raise ValueError(f"--sweep_steps: got {self.sweep_steps}; must be smaller than the budget --max_steps "
                             f"{budget} (a trial is a short run), or 0 for no sweep")
        if self.regime == "finetune" and is_preset(self.model_name) and self.base_steps == 0:
            raise ValueError(f"--base_steps: got 0; the finetune regime with the preset {self.model_name!r} (random "
                             "weights) needs a base model pretrained first (--base_steps >= 1), or a pretrained "
                             "--model_name (a save_pretrained folder or a hub name), or --regime pretrain")
        return self

    # --- what each method runs -----------------------------------------------------------------
    @property
    def final_seeds(self) -> list[int]:
        """The seeds of each method's final runs."""
        return self.seeds or [self.training.seed]

    @property
    def makes_base_model(self) -> bool:
        """Whether this comparison first pretrains a base model (the finetune regime on a preset)."""
        return self.regime == "finetune" and is_preset(self.model_name)

    def lr_source(self, method: str) -> str:
        """Where `method`'s learning rate comes from: sweep, --lr, method_args, or default (the method's own)."""
        if self.training.lr is not None:
            return "--lr"
        if "lr" in self.method_args.get(method, {}):
            return "method_args"
        return "sweep" if self.sweep_steps else "default"

    def lr_grid_for(self, method: str) -> list[float]:
        """The learning rates `method`'s sweep tries; [] when it is not swept (lr_source says why)."""
        if self.lr_source(method) != "sweep":
            return []
        return self.method_lr_grid.get(method, self.lr_grid)

    def tokenizer_name(self) -> str | None:
        """The data is tokenized with the model's own tokenizer; a preset's (None) is a BPE trained on the data."""
        return None if is_preset(self.model_name) else self.model_name

    def cache_dir(self) -> str:
        """Where the tokenized data lives (shared by every comparison writing to this output folder)."""
        return str(Path(self.output_dir) / "cache")

    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI

    def to_json(self) -> str:
        """What `--resume` reads back: everything but where the store is and the resume itself."""
        return self.model_dump_json(exclude={"resume", "tracking_uri"})

    def as_params(self) -> dict[str, str]:
        """One MLflow param per parameter given a value (the training options under their own names). One left
        unset is left out: what each method used instead is a param of its child run (`lr`, `warmup_steps`, ...)."""
        values = {**self.model_dump(exclude={"resume", "tracking_uri", "training"}), **self.training.model_dump()}
        return {k: ",".join(map(str, v)) if isinstance(v, list) else str(v) for k, v in values.items()
                if v not in (None, "", {}, [])}

    def run_name(self) -> str:
        """The parent run's name: what is compared, on which model."""
        return f"{', '.join(self.methods)} on {Path(self.model_name).name}"

    def hidden_size(self) -> int | None:
        return PRESETS[self.model_name].hidden_size if is_preset(self.model_name) else None

    def method_hyperparameters(self, method: str) -> dict[str, Any]:
        """What this comparison overrides for `method`'s optimizer: the regime's defaults (memopt/regimes.py),
        the shared rank and sparsity, then the method's own method_args."""
        optimizer = recipe(method).optimizer
        defaults = optim.spec(optimizer).defaults
        hp: dict[str, Any] = dict(regime_hyperparameters(self.regime, optimizer))
        if "rank" in defaults:
            if self.rank is not None:
                hp["rank"] = self.rank
            elif self.hidden_size():
                hp["rank"] = min(defaults["rank"], max(1, self.hidden_size() // 4))
        if "sparsity" in defaults and self.sparsity is not None:
            hp["sparsity"] = self.sparsity
        return {**hp, **self.method_args.get(method, {})}


def as_logged_before_regimes(logged: dict[str, Any]) -> dict[str, Any]:
    """A configuration read back from a parent run's config_json. One logged before regimes, sweeps and seeds
    existed ran in the pretrain regime at each method's own lr: it finishes that way."""
    return logged if "regime" in logged else {**logged, "regime": "pretrain", "sweep_steps": 0}


class TrainConfig(WithTraining):
    """What one training process (`python -m memopt.train CONFIG.json`) is told."""

    method: str = Field(description="a pipeline method name")
    model_name: str = Field(description="as CompareConfig.model_name")
    data_dir: str = Field(description="a TokenizedData folder")
    output_dir: str = Field(description="this method's own folder: checkpoints/, best/ and final/")
    run_id: str = Field(description="the MLflow child run, created by the train task")
    tracking_uri: str = Field(description="the MLflow store")
    method_args: dict[str, Any] = Field(default_factory=dict, description="the optimizer's hyperparameters beyond its defaults")
    random_init: bool = Field(False, description="a pretrained model_name's architecture with random weights (the "
                              "pretrain regime); presets are always random")
    evaluate_at_start: bool = Field(True, description="the untrained model's validation loss at step 0 (a sweep's "
                                    "trials leave it to the seed runs, which start from the same weights)")

    @classmethod
    def from_json(cls, path: str | Path) -> "TrainConfig":
        return cls.model_validate_json(Path(path).read_text())

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=2))
