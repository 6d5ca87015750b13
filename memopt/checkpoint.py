"""Atomic training checkpoints: weights as safetensors, everything else loadable with weights_only=True.

A checkpoint is a folder `step-00000123/` written under a temporary name and
renamed into place; the file `latest` (also replaced atomically) names the
newest complete one. A kill at any moment leaves the previous checkpoint whole.
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
    final = directory / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=f".{final.name}."))
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(trainer_state, tmp / "trainer_state.pt")
    if final.exists():  # re-written after a resume: same step, same content
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_atomically(directory / LATEST, final.name)
    for old in sorted(directory.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(directory: Path) -> Path | None:
    pointer = directory / LATEST
    if not pointer.is_file():
        return None
    path = directory / pointer.read_text().strip()
    return path if path.is_dir() else None


def load(path: Path, model: torch.nn.Module) -> dict[str, Any]:
    """Load the weights into `model` and return the trainer state."""
    load_model(model, str(path / "model.safetensors"))
    return torch.load(path / "trainer_state.pt", weights_only=True)
