"""The training process: one method, one OS process, one MLflow child run.

    python -m memopt.train CONFIG.json

Run by the train task (tasks/train.py), which creates the child run and hands
its id in. A process of its own gives each method its own peak memory and keeps
a crash its own. If the output folder holds a checkpoint, training resumes from
it into the same run; metrics already in the store are not logged again. The
engine itself is memopt/trainer.py.

Exit codes: 0 done, 3 retrying cannot help (the loss became NaN or inf, or no
checkpoint reads whole), 1 any other failure. The reason goes to the run as the
tag `memopt.failure_reason`. On SIGTERM or SIGINT it sends what it has logged and
ends by the signal (memopt/stopping.py); its latest checkpoint stays as it was.

Under torchrun (several processes, memopt/distributed.py) every rank runs this
same loop on its slice of each global batch; only rank 0 logs, evaluates and
writes checkpoints.
"""
from __future__ import annotations

import sys
import traceback

from memopt import distributed
from memopt.checkpoint import CheckpointError
from memopt.config import TrainConfig
from memopt.stopping import Stopped, die_by, die_with_parent, raise_on_signals
from memopt.tracking import RunLogger
from memopt.trainer import NonFiniteLoss, Trainer
from memopt.vocabulary import Tag

EXIT_NONFINITE = 3  # retrying cannot help: the same seed gives the same NaN, the same damaged checkpoint
NOT_RETRIABLE = (NonFiniteLoss, CheckpointError)


class _NoLogger:
    """What ranks other than 0 log: nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def _system_monitor(cfg: TrainConfig):
    """MLflow's own system metrics (system/cpu_utilization_percentage, ...) in this run, by run id: no
    active run needed (MLflow's active run is per thread)."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    return SystemMetricsMonitor(cfg.run_id, sampling_interval=cfg.training.system_metrics_interval_s,
                                resume_logging=True, tracking_uri=cfg.tracking_uri)


def train(cfg: TrainConfig) -> None:
    world = distributed.setup()
    logger = RunLogger(cfg.tracking_uri, cfg.run_id) if world.is_main else _NoLogger()
    system_monitor = _system_monitor(cfg) if cfg.training.system_metrics and world.is_main else None
    if system_monitor is not None:
        system_monitor.start()
    try:
        trainer = Trainer(cfg, world, logger)
        trainer.log_params()
        trainer.fit()
        trainer.finish()
    except Stopped:
        raise  # not a failure: the flow ends the run KILLED
    except BaseException as exc:
        print(f"[rank {world.rank}] {traceback.format_exc()}", file=sys.stderr)
        logger.tags({Tag.FAILURE_REASON: f"{type(exc).__name__}: {exc}"[:5000]})
        raise
    finally:
        if system_monitor is not None:
            system_monitor.finish()
        logger.close()
        distributed.teardown(world)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    die_with_parent()
    if len(args) != 1:
        print("usage: python -m memopt.train CONFIG.json", file=sys.stderr)
        return 2
    try:
        with raise_on_signals():
            train(TrainConfig.from_json(args[0]))
    except Stopped as exc:
        die_by(exc.signum)
    except NOT_RETRIABLE:
        return EXIT_NONFINITE
    except Exception:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
