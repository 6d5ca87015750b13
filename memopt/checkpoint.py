"""Atomic training checkpoints: weights as safetensors, everything else loadable with weights_only=True.

A checkpoint is a folder `step-00000123/` written under a temporary name, its
files synced, and renamed into place; the file `latest` (also replaced
atomically) names the newest complete one. A kill at any moment leaves the
previous checkpoint whole.

`resume` reads them back: the newest that reads whole (the one `latest`
names, unless that one is gone or damaged: a truncated file, a missing folder),
saying what it skipped. When checkpoints exist and none reads, it raises
`CheckpointError` naming the file: a run is never started again from step 0
because its checkpoint could not be read.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

LATEST = "latest"
FILES = ("model.safetensors", "trainer_state.pt")


class CheckpointError(RuntimeError):
    """No checkpoint of a method reads whole; the message names the file and what is wrong with it."""


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(directory: Path, step: int, model: torch.nn.Module, trainer_state: dict[str, Any], keep: int = 1) -> Path:
    """Write checkpoint `step`; keep the newest `keep` of them."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(".step-*"):  # the temporary folder of a save that was killed
        shutil.rmtree(stale, ignore_errors=True)
    final = directory / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=f".{final.name}."))
    save_model(model, str(tmp / FILES[0]))
    torch.save(trainer_state, tmp / FILES[1])
    for name in FILES:  # on disk before the rename, so a power cut cannot leave `latest` naming empty files
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
    if final.exists():  # re-written after a resume: same step, same content
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_atomically(directory / LATEST, final.name)
    for old in sorted(directory.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(directory: Path) -> Path | None:
    """The folder `latest` names, if it is there (whole or not: `resume` reads it)."""
    pointer = directory / LATEST
    if not pointer.is_file():
        return None
    path = directory / pointer.read_text().strip()
    return path if path.is_dir() else None


def load(path: Path, model: torch.nn.Module) -> dict[str, Any]:
    """Load the weights into `model` and return the trainer state; CheckpointError names a file that does not read
    (missing, truncated, or holding more than tensors and plain data), and why."""
    weights, state = (path / name for name in FILES)
    for file in (weights, state):
        if not file.is_file():
            raise CheckpointError(f"{file}: missing")
    for file, read in ((weights, lambda: load_model(model, str(weights))),
                       (state, lambda: torch.load(state, weights_only=True))):
        try:
            value = read()
        except Exception as exc:  # noqa: BLE001 (safetensors, zip and unpickling errors all mean it does not read)
            raise CheckpointError(f"{file} ({file.stat().st_size} bytes): {str(exc).splitlines()[0]}") from exc
    return value


def resume(directory: Path, model: torch.nn.Module) -> tuple[dict[str, Any], Path, list[str]] | None:
    """The newest checkpoint under `directory` that reads whole, loaded: (trainer state, its folder, what was skipped
    on the way, each with its reason). None when there is no checkpoint at all; CheckpointError when there are
    checkpoints and none reads."""
    pointer = directory / LATEST
    named = pointer.read_text().strip() if pointer.is_file() else None
    # Newest first: a step folder is renamed into place only once whole, so the newest is what `latest` names,
    # or newer (a kill between the rename and the pointer's update).
    folders = sorted((p for p in directory.glob("step-*") if p.is_dir()), reverse=True)
    if named is None and not folders:
        return None
    skipped = [] if named is None or (directory / named).is_dir() else [f"{directory / named}: missing (named by {pointer})"]
    for folder in folders:
        try:
            return load(folder, model), folder, skipped
        except CheckpointError as exc:
            skipped.append(str(exc))
    raise CheckpointError(f"no checkpoint in {directory} reads whole: {'; '.join(skipped)}. Delete {directory} "
                          "to train this method again from step 0")

