"""Serve compare_optimizers on a schedule, for the Prefect UI.

    prefect server start --host 127.0.0.1                      # in one terminal
    python -m flows.serve --cron "0 2 * * *" --max_steps 200   # in another: runs nightly, shows in the UI
    python -m flows.serve --interval_s 21600                   # or every 6 hours from now

Every parameter of `python -m flows.compare` is accepted and becomes the
deployment's default (the UI's run form can still change each one). `serve`
runs the scheduled flow runs in this process, one at a time (trainings compete
for the same memory); stop it with Ctrl-C.
"""
from __future__ import annotations

import sys
from typing import Any

from pydantic import Field, model_validator

from flows.compare import compare_optimizers
from memopt.cli import from_command_line
from memopt.config import CompareConfig, ConfigError

NIGHTLY = "0 2 * * *"


class ServeOptions(CompareConfig):
    """A comparison, plus when and under which name to serve it."""

    cron: str = Field("", description=f"when to run, in cron syntax and the server's time zone (unset, and no "
                      f"--interval_s: {NIGHTLY!r}, nightly)")
    interval_s: float | None = Field(None, gt=0, allow_inf_nan=False,
                                     description="seconds between runs, the first one interval from now (instead "
                                     "of --cron)")
    name: str = Field("nightly-comparison", description="the deployment's name")

    @model_validator(mode="after")
    def _one_schedule(self) -> "ServeOptions":
        if self.interval_s is not None and self.cron:
            raise ValueError("--interval_s: give it or --cron, not both")
        return self

    def schedule(self) -> dict[str, Any]:
        """The keyword arguments of Flow.serve that say when."""
        return {"interval": self.interval_s} if self.interval_s is not None else {"cron": self.cron or NIGHTLY}


def main(argv: list[str] | None = None) -> int:
    try:
        opts = from_command_line(ServeOptions, sys.argv[1:] if argv is None else argv, prog="python -m flows.serve",
                                 description=__doc__.split("\n")[0])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = CompareConfig.model_validate(opts.model_dump(exclude={"cron", "interval_s", "name"}))
    compare_optimizers.serve(name=opts.name, parameters={"config": config.model_dump(mode="json")}, limit=1,
                             **opts.schedule())
    return 0


if __name__ == "__main__":
    sys.exit(main())
