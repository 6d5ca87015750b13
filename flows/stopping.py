"""How a comparison stops on SIGTERM, SIGINT or a Prefect cancellation: nothing left RUNNING, everything resumable.

1. The signal raises `Stopped` in the flow's main thread (memopt/stopping.py). A
   cancellation from the Prefect UI becomes a SIGTERM to the main thread: a
   thread here watches the flow run's state (a worker's runner would send the
   SIGTERM itself). The train task's `finally` stops its training process group.
2. At once, a thread of its own ends the comparison's MLflow runs KILLED, tagged
   `memopt.stopped_by` with the signal. It does not wait on Prefect: a signal to
   the process group stops Prefect's temporary server too, and Prefect would
   retry its API for minutes.
3. The flow run ends Crashed (a signal) or Cancelled (a cancellation). The
   command line (`end_process_on_stop`) then exits 128 + the signal (143, 130);
   if Prefect's API no longer answers, or the stop takes longer than
   DEADLINE_S, the thread ends the process itself.

The latest complete checkpoint of every method stays as it was: `--resume
PARENT` finishes the comparison.
"""
from __future__ import annotations

import atexit
import contextlib
import contextvars
import os
import signal
import sys
import threading
import time
from typing import Iterator, NoReturn

import httpx
from mlflow import MlflowClient
from prefect import get_client

from memopt.stopping import Stopped, interrupt_main, raise_on_signals
from memopt.tracking import kill_comparison

DEADLINE_S = 8.0  # from the signal to the end of the process, at the most
POLL_S = 2.0  # how often the flow run's state is read for a cancellation
CANCELLATION = "Prefect cancellation"


class Stop:
    """The stop of one flow run: what the signal handler, the watcher thread and the command line share."""

    def __init__(self, flow_run_id: str | None):
        self.flow_run_id = flow_run_id
        self.comparison: tuple[MlflowClient, str] | None = None  # (client, parent run id), once the parent exists
        self.stopped: Stopped | None = None
        self.runs_ended = threading.Event()
        self.runs_left = "runs ended KILLED"  # or why not
        self.started = time.monotonic()
        self.api_url: str | None = None  # Prefect's, to tell whether it still answers
        self._done_watching = threading.Event()
        self._said = threading.Lock()

    @property
    def cancelled(self) -> bool:
        return self.stopped is not None and self.stopped.reason == CANCELLATION

    # --- in the signal handler (main thread) --------------------------------------------------------------
    def begin(self, stopped: Stopped) -> None:
        self.stopped, self.started = stopped, time.monotonic()
        _thread(self._end_runs, "memopt-stop")

    def _end_runs(self) -> None:
        try:
            if self.comparison is not None:
                kill_comparison(*self.comparison, self.stopped.reason)
        except Exception as exc:  # noqa: BLE001 (the store may be what failed; say so and still end)
            self.runs_left = f"could not end the MLflow runs KILLED ({exc})"
        finally:
            self.runs_ended.set()
        if _end_process:
            if _prefect_answers(self.api_url):  # else nothing is worth waiting for: Prefect would only retry
                time.sleep(max(0.0, DEADLINE_S - (time.monotonic() - self.started)))
            self.exit(exit_handlers=False)  # normally the command line has ended the process before

    # --- the Prefect cancellation -------------------------------------------------------------------------
    def watch(self) -> None:
        if self.flow_run_id is not None:
            _thread(self._watch, "memopt-cancel-watch")

    def _watch(self) -> None:
        with get_client(sync_client=True, httpx_settings={"timeout": POLL_S * 2}) as client:  # a client of its own
            while not self._done_watching.wait(POLL_S):
                with contextlib.suppress(Exception):  # a server away for a moment: read it again next time
                    state = client.read_flow_run(self.flow_run_id).state
                    if state is not None and (state.is_cancelling() or state.is_cancelled()):
                        interrupt_main(signal.SIGTERM, CANCELLATION)
                        return

    # --- the end ------------------------------------------------------------------------------------------
    def say(self) -> None:
        """The one line that says what happened and how to finish, once."""
        if not self._said.acquire(blocking=False):
            return
        self.runs_ended.wait(max(0.0, DEADLINE_S - (time.monotonic() - self.started)))
        resume = f"; finish it with: python -m flows.compare --resume {self.comparison[1]}" if self.comparison else ""
        print(f"stopped by {self.stopped.reason}: training stopped, {self.runs_left}, checkpoints kept{resume}",
              file=sys.stderr, flush=True)

    def exit(self, exit_handlers: bool = True) -> NoReturn:
        """End the process with 128 + the signal. With `exit_handlers`, the atexit handlers run first (Prefect's:
        its last logs sent, its temporary server stopped), but not the interpreter's finalization, which can take
        many seconds after a training (the deadline thread cannot run during it)."""
        self.say()
        if exit_handlers:
            with contextlib.suppress(BaseException):
                atexit._run_exitfuncs()  # what a normal exit runs, here, while the deadline thread still can
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(self.stopped.exit_code)


_end_process = False
_current: Stop | None = None


def end_process_on_stop() -> None:
    """The command line's choice: a stop ends this process within DEADLINE_S (not so inside a test or a worker)."""
    global _end_process
    _end_process = True


def current() -> Stop | None:
    """The stop of the flow run in this process, if one began."""
    return _current if _current is not None and _current.stopped is not None else None


@contextlib.contextmanager
def stop_on_signals(flow_run_id: str | None) -> Iterator[Stop]:
    """Inside: SIGTERM, SIGINT and a cancellation of `flow_run_id` stop the comparison as this module says. Set
    `stop.comparison` once the parent run exists."""
    global _current
    stop = _current = Stop(flow_run_id)
    if flow_run_id is not None:
        stop.api_url = str(get_client(sync_client=True).api_url)  # the flow run's own client (not to be closed)
    with raise_on_signals(stop.begin):
        stop.watch()
        try:
            yield stop
        finally:
            stop._done_watching.set()


def _prefect_answers(url: str | None) -> bool:
    if url is None:
        return False
    try:
        return httpx.get(f"{url.rstrip('/')}/health", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _thread(target, name: str) -> None:
    # Prefect's settings (its API's address) live in context variables: the thread gets a copy
    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(target,), name=name, daemon=True).start()
