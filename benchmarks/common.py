"""What every benchmark shares: the machine line and writing its table into BENCHMARKS.md.

Each benchmark owns one section of BENCHMARKS.md, between `<!-- bench:NAME -->`
and `<!-- /bench:NAME -->`; a re-run replaces that section and leaves the others.
"""
from __future__ import annotations

import datetime as dt
import os
import platform
import re
import shlex
import sys
from pathlib import Path

import torch

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nEvery table is written by the command above it; re-run that command to reproduce it.\n"


def machine() -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {device}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, {dt.date.today().isoformat()}"
    )


def command() -> str:
    """The command that reproduces the running benchmark (run as `python -m benchmarks.NAME`)."""
    return f"python -m benchmarks.{Path(sys.argv[0]).stem} {shlex.join(sys.argv[1:])}".rstrip()  # quoted: '' survives


def write_section(name: str, title: str, body: str) -> None:
    """Replace (or append) the section `name` of BENCHMARKS.md."""
    section = (
        f"<!-- bench:{name} -->\n## {title}\n\n`{command()}`\n\nMachine: {machine()}\n\n{body.strip()}\n<!-- /bench:{name} -->"
    )
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else HEADER
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    BENCHMARKS_MD.write_text(text)


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# One Prefect home for every benchmark's flow runs: its database is created once, not in a timed run.
PREFECT_HOME = os.path.join(os.environ.get("TMPDIR", "/tmp"), "memopt-bench-prefect")
