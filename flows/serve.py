"""Serve compare_optimizers on a cron schedule, for the Prefect UI.

    prefect server start --host 127.0.0.1                      # in one terminal
    python -m flows.serve --cron "0 2 * * *" --max_steps 200   # in another: runs nightly, shows in the UI

Every parameter of `python -m flows.compare` is accepted and becomes the
deployment's default (the UI's run form can still change each one). `serve`
runs the scheduled flow runs in this process; stop it with Ctrl-C.
"""
from __future__ import annotations

import sys

from pydantic import Field

from flows.compare import compare_optimizers
from memopt.cli import from_command_line
from memopt.config import CompareConfig, ConfigError


class ServeOptions(CompareConfig):
    """A comparison, plus when and under which name to serve it."""

    cron: str = Field("0 2 * * *", description="when to run (cron syntax, the server's time zone)")
    name: str = Field("nightly-comparison", description="the deployment's name")


def main(argv: list[str] | None = None) -> int:
    try:
        opts = from_command_line(ServeOptions, sys.argv[1:] if argv is None else argv, prog="python -m flows.serve",
                                 description=__doc__.split("\n")[0])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = CompareConfig.model_validate(opts.model_dump(exclude={"cron", "name"}))
    compare_optimizers.serve(name=opts.name, cron=opts.cron, parameters={"config": config.model_dump(mode="json")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
