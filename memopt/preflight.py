"""The checks of a comparison that need the outside world: the model, the dataset, the output folder and the
tracking store. They run after the configuration itself is valid (memopt/config.py) and before anything is
started; the first failure raises `ConfigError`. The tracking store comes last, since reaching a sqlite
store creates its file.
"""
from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import torch

from memopt import optim
from memopt.blocks import DEFAULT_VOCAB_SIZE
from memopt.config import CompareConfig, ConfigError
from memopt.data import DatasetError, check_dataset
from memopt.methods import recipe, run_hyperparameters
from memopt.models import PRESETS, build_model, is_preset, max_positions, preset_config


def check(cfg: CompareConfig) -> None:
    _check_model(cfg)
    for name, dataset in (("dataset", cfg.dataset), *([("base_dataset", cfg.base_dataset)] if cfg.makes_base_model else [])):
        try:
            check_dataset(dataset)
        except DatasetError as exc:
            raise ConfigError(f"--{name}: {exc}") from None
    _check_output_dir(cfg.output_dir)
    _check_tracking_uri(cfg.resolved_tracking_uri())


def _check_model(cfg: CompareConfig) -> None:
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
        name = recipe(method).optimizer
        try:
            facts = run_hyperparameters(name, total_steps=max(1, cfg.training.max_steps), accumulation_steps=1)
            optim.build(name, model, **{**facts, **cfg.method_hyperparameters(method)})
        except ValueError as exc:  # each family's config checks every value, its type included
            raise ConfigError(f"--methods {method}: {exc}") from None
        except (NotImplementedError, RuntimeError):
            pass  # this optimizer needs real tensors to build; the training process checks it


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
    elif uri.startswith("file:") or "://" not in uri:
        raise ConfigError(f"--tracking_uri: {uri}: use sqlite:///PATH.db or http://HOST:PORT (the file store is retired)")
