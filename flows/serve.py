"""Serve compare_optimizers on a cron schedule, for the Prefect UI.

    prefect server start --host 127.0.0.1        # in one terminal
    python -m flows.serve --cron "0 2 * * *"     # in another: runs nightly, shows in the UI

`serve` runs the scheduled flow runs in this process; stop it with Ctrl-C.
"""
from __future__ import annotations

import argparse

from flows.compare import compare_optimizers


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.split("\n")[0])
    p.add_argument("--cron", default="0 2 * * *", help="when to run (cron syntax, the server's time zone)")
    p.add_argument("--name", default="nightly-comparison", help="the deployment's name")
    p.add_argument("--methods", default="adamw,galore,blockllm")
    p.add_argument("--max_steps", type=int, default=0)
    a = p.parse_args(argv)
    compare_optimizers.serve(
        name=a.name,
        cron=a.cron,
        parameters={"methods": a.methods.split(","), "max_steps": a.max_steps},
    )


if __name__ == "__main__":
    main()
