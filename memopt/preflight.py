"""The checks of a comparison that need the outside world: the model, the dataset, the output folder and the
tracking store. They run after the configuration itself is valid (memopt/config.py) and before anything is
started; the first failure raises `ConfigError`. The tracking store comes last, since reaching a sqlite
store creates its file.

`check_data` tokenizes the data (or finds it tokenized) to check the batch against its size, which only the
tokens tell; the command line runs it before the flow starts, the flow's tokenize task before any run is made.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import torch

from memopt import hub, optim
from memopt.blocks import DEFAULT_VOCAB_SIZE, load_tokenizer, tokenize_dataset, tokenized_dir
from memopt.config import INT64_MAX, WHY_BOUND, CompareConfig, ConfigError, TrainingOptions
from memopt.data import DatasetError, check_dataset
from memopt.methods import recipe, run_hyperparameters
from memopt.models import (PICKLED_WEIGHTS, PRESETS, build_model, is_local_model, is_preset, max_positions, preset_config,
                           safetensors_files)


def check(cfg: CompareConfig) -> None:
    _check_model(cfg)
    for name, dataset in (("dataset", cfg.dataset), *([("base_dataset", cfg.base_dataset)] if cfg.makes_base_model else [])):
        try:
            check_dataset(dataset)
        except DatasetError as exc:
            raise ConfigError(f"--{name}: {exc}") from None
    _check_output_dir(cfg.output_dir)
    _check_tracking_uri(cfg.resolved_tracking_uri())


def check_data(cfg: CompareConfig) -> str:
    """Tokenize the comparison's data into its cache (or reuse it there) and check the batch against it;
    returns the folder. On an error nothing is left behind. A base model to make first (the finetune regime on a
    preset) brings its own tokenizer, which does not exist yet: its pretraining text and batch are checked here (the
    base task finds them tokenized), the task data once the base is made (flows/compare.py)."""
    tokenizer, dataset, training = cfg.tokenizer_name(), cfg.dataset, cfg.training
    if cfg.makes_base_model:
        dataset, training = cfg.base_dataset, training.model_copy(update={"total_batch_size": 0, "max_steps": cfg.base_steps})
    out = tokenized_dir(cfg.cache_dir(), dataset, tokenizer, cfg.seq_len, cfg.training.seed)
    check = functools.partial(check_blocks, training, dataset, cfg.seq_len)
    try:
        return str(tokenize_dataset(dataset, tokenizer, cfg.seq_len, out, seed=cfg.training.seed, check=check).root)
    except ConfigError:
        raise
    except DatasetError as exc:
        raise ConfigError(f"--dataset: {exc}") from None
    except ValueError as exc:  # the model's tokenizer (memopt.blocks.load_tokenizer names it)
        raise ConfigError(f"--model_name: {exc}") from None


def check_blocks(training: TrainingOptions, dataset: str, seq_len: int, meta: dict) -> None:
    """A step takes `global_batch_size` of the training blocks, and the run's step count must fit an MLflow step."""
    blocks, batch = int(meta["n_blocks"]["train"]), training.global_batch_size
    if blocks < batch:
        per_round = training.batch_size * training.world_size  # total_batch_size must stay a multiple of it
        if training.total_batch_size and blocks >= per_round:
            name, value, most = "total_batch_size", training.total_batch_size, blocks // per_round * per_round
        else:
            name, value, most = "batch_size", training.batch_size, blocks // training.world_size
        processes = f" ({training.world_size} processes)" if training.world_size > 1 else ""
        raise ConfigError(f"--{name}: got {value}; a step's {batch} sequences{processes} are more than the {blocks} "
                          f"training blocks of {seq_len} tokens in {dataset!r}: must be at most {most}")
    steps = training.max_steps or training.epochs * (blocks // batch)
    if steps > INT64_MAX:
        raise ConfigError(f"--epochs: got {training.epochs}; {training.epochs} epochs of {blocks // batch} steps are "
                          f"{steps} steps, more than {INT64_MAX} ({WHY_BOUND[INT64_MAX]})")


def _check_model(cfg: CompareConfig) -> None:
    if is_preset(cfg.model_name):
        limit = preset_config(cfg.model_name).max_position_embeddings
    else:
        if not Path(cfg.model_name).expanduser().exists() and cfg.model_name.startswith((".", "/", "~")):
            raise ConfigError(f"--model_name: {cfg.model_name!r}: no such folder (a preset: {', '.join(PRESETS)}; "
                              "a save_pretrained folder; or a hub name)")
        if not Path(cfg.model_name).exists() and (why := hub.unreachable_hint()) is not None:
            raise ConfigError(f"--model_name: {cfg.model_name!r} is not a preset or a local folder, and the Hugging Face "
                              f"hub is out of reach ({why})")
        try:
            limit = max_positions(cfg.model_name)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"--model_name: cannot load a model config from {cfg.model_name!r} "
                f"(a preset: {', '.join(PRESETS)}; a save_pretrained folder; or a hub name): {exc}"
            ) from None
    if limit is not None and cfg.seq_len > limit:
        raise ConfigError(f"--seq_len: got {cfg.seq_len}; model {cfg.model_name!r} allows at most {limit} positions")
    if is_local_model(cfg.model_name):
        _check_model_folder(Path(cfg.model_name))
    if not is_preset(cfg.model_name):
        return
    # Every optimizer checks its own hyperparameters; build each on a weightless (meta) copy of the model, a fresh
    # one per method: building freezes tensors (BlockLLM, BAdam) or replaces modules (Low-Rank, LoRO, ...).
    for method in cfg.methods:
        with torch.device("meta"):
            model = build_model(cfg.model_name, vocab_size=DEFAULT_VOCAB_SIZE)
        name = recipe(method).optimizer
        try:
            facts = run_hyperparameters(name, total_steps=max(1, cfg.training.max_steps), accumulation_steps=1)
            optim.build(name, model, **{**facts, **cfg.method_hyperparameters(method)})
        except ValueError as exc:  # each family's config checks every value, its type included
            raise ConfigError(f"--methods {method}: {exc}") from None
        except (NotImplementedError, RuntimeError):
            pass  # this optimizer needs real tensors to build; the training process checks it


def _check_model_folder(folder: Path) -> None:
    """A save_pretrained folder: weights as safetensors (a pickle runs code when it is loaded), and a tokenizer."""
    if not safetensors_files(folder):
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLED_WEIGHTS)
        if pickled:
            raise ConfigError(
                f"--model_name: {folder} holds its weights as a pickle ({', '.join(pickled)}), which can run code when "
                "loaded; only safetensors are loaded from a folder. Weights you trust convert with: python -c \"from "
                f"transformers import AutoModelForCausalLM as M; M.from_pretrained('{folder}').save_pretrained('{folder}')\"")
        raise ConfigError(f"--model_name: {folder} has no weights (model.safetensors, as save_pretrained writes them)")
    try:
        load_tokenizer(str(folder))
    except Exception as exc:  # noqa: BLE001 (transformers raises OSError, ValueError, TypeError... for a missing one)
        first_line = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ConfigError(f"--model_name: {folder} has no tokenizer that loads ({first_line.strip()}); the data is "
                          f"tokenized with the model's own: save it beside the model, tokenizer.save_pretrained('{folder}')"
                          ) from None


def _check_output_dir(output_dir: str) -> None:
    path = Path(output_dir).resolve()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--output_dir: {output_dir!r} cannot be written ({existing} is not a writable folder)")
    try:  # os.access says yes to root everywhere; a read-only mount or /proc says no only when written
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as exc:
        raise ConfigError(f"--output_dir: {output_dir!r} cannot be written ({existing}: {exc.strerror})") from None


def _check_tracking_uri(uri: str) -> None:
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
        if db.is_dir():
            raise ConfigError(f"--tracking_uri: {uri}: {db} is a folder; name a sqlite file, e.g. sqlite:///{db / 'mlflow.db'}")
        if db.exists():
            _check_sqlite_store(uri, db)
    elif uri.startswith("file:") or "://" not in uri:
        raise ConfigError(f"--tracking_uri: {uri}: use sqlite:///PATH.db or http://HOST:PORT (the file store is retired)")


def _check_sqlite_store(uri: str, db: Path) -> None:
    """An existing file must be a sqlite database that is an MLflow store (or still empty), and writable."""
    try:  # read-only: looking must not change the file
        with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as con:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        raise ConfigError(f"--tracking_uri: {uri}: {db} is not a sqlite database ({exc})") from None
    if tables and "experiments" not in tables:
        raise ConfigError(f"--tracking_uri: {uri}: {db} is a sqlite database but not an MLflow store "
                          f"(tables {', '.join(sorted(tables)[:5])}{', ...' if len(tables) > 5 else ''})")
    if not os.access(db, os.R_OK | os.W_OK):
        raise ConfigError(f"--tracking_uri: {uri}: {db} cannot be written")
