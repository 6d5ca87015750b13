"""Stopping on SIGTERM and SIGINT: the flow process and each training process.

Both turn the first signal into `Stopped`, raised in the main thread, so the
code below them ends in order: the flow stops its training processes and ends
the MLflow runs KILLED (flows/stopping.py), a training process sends what it
has logged. Then each ends as the signal would have ended it: `die_by`.

A training process runs in a process group of its own (torchrun and its
workers with it), so that a Ctrl-C in the terminal reaches the flow alone and
the flow decides: `stop_process_group` ends the whole group.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from typing import Callable, Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)
GRACE_S = 5.0  # what a training process gets to send its last metrics before SIGKILL
PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None  # loaded before any fork


class Stopped(BaseException):
    """SIGTERM, SIGINT or a Prefect cancellation. A BaseException, like KeyboardInterrupt: no `except Exception`
    and no Prefect retry takes it for a failure."""

    def __init__(self, signum: int, reason: str | None = None):
        self.signum = signum
        self.reason = reason or signal.Signals(signum).name
        super().__init__(self.reason)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell shows for a death by this signal: 143 for SIGTERM, 130 for SIGINT


@contextlib.contextmanager
def raise_on_signals(on_first: Callable[[Stopped], None] | None = None) -> Iterator[None]:
    """Inside: the first SIGTERM or SIGINT raises Stopped in the main thread, after `on_first(stopped)`; later ones
    are ignored (the stop under way is bounded). The previous handlers come back on the way out. Outside the main
    thread (signals are not delivered there) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    first: list[Stopped] = []

    def handler(signum: int, frame: object) -> None:
        if first:
            return
        first.append(Stopped(signum, reason_for(signum)))
        if on_first is not None:
            on_first(first[0])
        raise first[0]

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


_reasons: dict[int, str] = {}


def reason_for(signum: int) -> str | None:
    return _reasons.pop(signum, None)


def interrupt_main(signum: int, reason: str) -> None:
    """From another thread: stop as `signum` would, with `reason` (a real signal to the main thread, which wakes it
    from a blocking wait as `_thread.interrupt_main` would not)."""
    _reasons[signum] = reason
    signal.pthread_kill(threading.main_thread().ident, signum)


def die_by(signum: int) -> None:
    """End this process as `signum` would, without Python's exit handlers (which may wait on servers that the
    signal stopped too): the parent sees a death by the signal, a shell shows 128 + signum."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)  # only if the signal could not end it


def die_with_parent() -> None:
    """Linux: get SIGKILL when the process that started this one dies. A flow killed with kill -9 would otherwise
    leave its training training on, into the checkpoints and the run a resume is about to use. Also the `preexec_fn`
    of a training process's launch (torchrun, whose workers do the same): it only calls prctl, safe after a fork."""
    if _libc is None:
        return
    parent = os.getppid()
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def stop_process_group(proc: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    """End `proc` and every process of its group (started with start_new_session=True): SIGTERM, and SIGKILL to
    what is left after `grace_s`. Nothing happens if it has already ended."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
