"""What the tests that run `python -m flows.compare` as a process share: starting it, waiting on it, finding its
training processes, ending it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def start_flow(args: list[str], cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    # A session of its own: killing its group can never reach pytest.
    return subprocess.Popen([sys.executable, "-m", "flows.compare", *args], cwd=cwd, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(condition, proc: subprocess.Popen, log: Path, what: str, timeout: float = 300, every: float = 0.02):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if proc.poll() is not None:
            raise AssertionError(f"the flow ended (exit {proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(every)
    return value


def training_pids(fragment: str) -> list[int]:
    """Live `python -m memopt.train CONFIG` processes whose config path contains `fragment`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            alive = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            continue
        if alive and b"memopt.train" in cmd and any(fragment.encode() in c for c in cmd):
            pids.append(int(proc.name))
    return pids


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
