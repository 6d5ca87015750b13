"""Deploy compare_optimizers to a Prefect process work pool, for workers on other machines.

    prefect server start --host 127.0.0.1                      # or a team server (README: Scaling out)
    python -m flows.deploy --pool memopt --name compare        # once: the pool (if missing) and the deployment
    prefect worker start --pool memopt --limit 1               # on each training machine, from this folder
    prefect deployment run compare-optimizers/compare --params '{"config": {"max_steps": 200}}'

The pool is a `process` pool: a worker runs each flow run as a subprocess of
its own, in this project folder (the deployment's source), with the worker's
Python. Trainings compete for the same memory and cores, so a new pool allows
one flow run at a time (`--concurrency_limit 1`); with several machines raise it
to the number of workers and start each worker with `--limit 1`: one training
per machine, the pool spreading the runs.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.exceptions import ObjectNotFound
from prefect.utilities.asyncutils import run_coro_as_sync

from flows.compare import compare_optimizers

ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = "flows/compare.py:compare_optimizers"


async def _ensure_pool(name: str, concurrency_limit: int | None) -> None:
    async with get_client() as client:
        try:
            await client.read_work_pool(name)
            await client.update_work_pool(name, WorkPoolUpdate(concurrency_limit=concurrency_limit))
        except ObjectNotFound:
            await client.create_work_pool(WorkPoolCreate(name=name, type="process", concurrency_limit=concurrency_limit))


def deploy(pool: str, name: str = "compare", concurrency_limit: int | None = 1, parameters: dict[str, Any] | None = None,
           source: Path = ROOT) -> UUID:
    """Create (or update) the process pool and deploy the flow from `source`; returns the deployment id."""
    run_coro_as_sync(_ensure_pool(pool, concurrency_limit))
    flow = compare_optimizers.from_source(source=str(source), entrypoint=ENTRYPOINT)
    # to_deployment().apply() rather than flow.deploy(): deploy() first lists the pool's online workers with
    # offset/limit sent as null, which a server under FastAPI >= 0.151 rejects (422; requirements.txt pins 0.150).
    deployment = flow.to_deployment(
        name=name,
        work_pool_name=pool,
        parameters=parameters or {},
        # the flow run's process imports memopt/tasks/flows from the source folder
        job_variables={"env": {"PYTHONPATH": str(source)}},
    )
    return deployment.apply(work_pool_name=pool)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.split("\n")[0])
    p.add_argument("--pool", default="memopt", help="the process work pool (created if missing)")
    p.add_argument("--name", default="compare", help="the deployment's name")
    p.add_argument("--concurrency_limit", type=int, default=1, help="flow runs at a time in the whole pool (default 1)")
    a = p.parse_args(argv)
    if a.concurrency_limit < 1:
        p.error(f"--concurrency_limit: got {a.concurrency_limit}; must be an integer >= 1")
    deployment = deploy(a.pool, a.name, a.concurrency_limit)
    print(f"deployment {compare_optimizers.name}/{a.name} ({deployment}) on pool {a.pool!r}; "
          f"start a worker: prefect worker start --pool {a.pool} --limit 1")


if __name__ == "__main__":
    main()
