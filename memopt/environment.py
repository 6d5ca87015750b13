"""What a comparison ran on: library versions, the device, the CPU and its threads, the project's commit.

The flow records these as tags of the parent run (`memopt.env.NAME`) when the comparison opens, so the
report, built from MLflow alone, can say what produced its numbers.
"""
from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = ("torch", "transformers", "mlflow", "prefect")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor()


def git_commit() -> str:
    """The project's commit, with "(modified)" when the work tree differs from it; "" outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    if not (PROJECT_ROOT / ".git").exists():  # installed from a wheel: whatever repository holds it is not ours
        return ""
    try:
        commit = git("rev-parse", "HEAD")
        return commit + (" (modified)" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def device() -> str:
    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.device_count()} × {torch.cuda.get_device_name()}"
    return "cpu"


def environment() -> dict[str, str]:
    """The facts, by name (the order the report shows them in)."""
    return {
        **{name: metadata.version(name) for name in LIBRARIES},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device(),
        "cpu": cpu_model(),
        "cpu_count": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "git_commit": git_commit(),
    }
