"""The report's data, read from MLflow alone: the parent run, each method's child run and its metric histories."""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from itertools import accumulate

from mlflow import MlflowClient
from mlflow.entities import Run

from memopt.tracking import child_runs, seed_runs
from memopt.vocabulary import CONFIG_PARAM, MemoryPart, Metric, Param, Tag

MIB = 1024 * 1024
Curve = list[tuple[int, float]]  # (optimizer step, value)


@dataclass
class MethodResult:
    method: str
    status: str
    reason: str
    run_id: str = ""
    trained_run_id: str = ""  # the run of the training process shown: the method's first seed run, else its own
    lr: float | None = None
    train_loss: float | None = None
    val_loss: float | None = None  # the final model's, on the whole validation split
    perplexity: float | None = None
    accuracy: float | None = None
    peak_rss_mb: float | None = None  # the process's high-water mark of resident memory
    cuda_peak_mb: float | None = None  # torch's peak allocated CUDA memory
    training_mb: float | None = None  # peak RSS minus the RSS right before the model was built
    state_mb: float | None = None
    tokens_per_s: float | None = None  # the last logged: every token trained ÷ the training steps' time
    train_seconds: float | None = None  # the training steps' own time, summed
    epoch_time_s: float | None = None
    epoch_time_measured: bool = False  # False: an estimate (fewer steps than one epoch ran)
    tokens_per_step: int = 0
    train_curve: Curve = field(default_factory=list)
    val_curve: Curve = field(default_factory=list)  # while training (eval_batches batches)
    seconds_at: dict[int, float] = field(default_factory=dict)  # step -> training seconds through that step
    memory_samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds since the first, MB)
    breakdown: dict[str, float] = field(default_factory=dict)  # memory/* metrics (MiB) of the measured step
    breakdown_step: int | None = None
    cuda: bool = False
    checkpointed: bool = False  # gradient checkpointing: the measured activations are a lower bound

    @property
    def peak_mb(self) -> float | None:
        """The memory the methods are compared by: peak allocated on CUDA (the papers' figure), else peak RSS."""
        return self.cuda_peak_mb if self.cuda else self.peak_rss_mb

    @property
    def label(self) -> str:
        """The method with its learning rate, as every plot's legend names it."""
        return self.method if self.lr is None else f"{self.method} (lr {self.lr:.3g})"

    def tokens_at(self, step: int) -> int:
        return step * self.tokens_per_step


@dataclass
class Comparison:
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    start_time_ms: int
    config: dict
    environment: dict[str, str]
    results: list[MethodResult]

    @property
    def date(self) -> str:
        """When the comparison started, in UTC."""
        return dt.datetime.fromtimestamp(self.start_time_ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    def by_method(self, method: str) -> MethodResult | None:
        return next((r for r in self.results if r.method == method), None)


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float, int]]:
    return sorted((m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, key))


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "", "None") else None
    except ValueError:
        return None


def _timing(r: MethodResult, client: MlflowClient, source: Run) -> None:
    params = source.data.params
    step_times = _history(client, source.info.run_id, Metric.STEP_TIME_S)
    if not step_times:
        return
    steps = [s for s, _, _ in step_times]
    r.seconds_at = dict(zip(steps, accumulate(v for _, v, _ in step_times)))
    r.train_seconds = r.seconds_at[steps[-1]]
    per_epoch = int(params.get(Param.STEPS_PER_EPOCH, 0)) or len(steps)
    epochs = len(steps) // per_epoch
    r.epoch_time_measured = epochs >= 1
    r.epoch_time_s = (r.seconds_at[steps[epochs * per_epoch - 1]] / epochs if r.epoch_time_measured
                      else r.train_seconds / len(steps) * per_epoch)


def method_result(client: MlflowClient, run: Run, history_run: Run | None = None) -> MethodResult:
    """A method's row. Its numbers are `run`'s metrics (with seed runs, their means: memopt/tracking.py); its
    histories, step times, parameters and breakdown come from `history_run` (its first seed run) when given."""
    metrics = run.data.metrics
    source = history_run or run
    params, own = source.data.params, source.info.run_id
    r = MethodResult(run.data.tags[Tag.METHOD], run.info.status, run.data.tags.get(Tag.FAILURE_REASON, ""),
                     run.info.run_id, own, lr=_float(params.get(Param.LR)))
    r.cuda = params.get(Param.DEVICE) == "cuda"
    r.checkpointed = params.get(Param.GRADIENT_CHECKPOINTING) == "True"
    r.tokens_per_step = int(params.get(Param.GLOBAL_BATCH_SIZE, 0)) * int(params.get(Param.SEQ_LEN, 0))
    _timing(r, client, source)
    r.tokens_per_s = metrics.get(Metric.TOKENS_PER_S)
    r.train_curve = [(s, v) for s, v, _ in _history(client, own, Metric.TRAIN_LOSS)]
    r.val_curve = [(s, v) for s, v, _ in _history(client, own, Metric.VAL_LOSS)]
    r.train_loss = metrics.get(Metric.TRAIN_LOSS)
    r.val_loss = metrics.get(Metric.FINAL_VAL_LOSS, metrics.get(Metric.VAL_LOSS))
    r.perplexity = metrics.get(Metric.FINAL_VAL_PERPLEXITY)
    r.accuracy = metrics.get(Metric.ANSWER_ACCURACY)
    r.peak_rss_mb, r.cuda_peak_mb = metrics.get(Metric.PEAK_RSS_MB), metrics.get(Metric.CUDA_PEAK_ALLOCATED_MB)
    if r.peak_rss_mb is not None and Metric.RSS_AT_START_MB in metrics:
        r.training_mb = r.peak_rss_mb - metrics[Metric.RSS_AT_START_MB]
    if Metric.OPTIMIZER_STATE_BYTES in metrics:
        r.state_mb = metrics[Metric.OPTIMIZER_STATE_BYTES] / MIB
    samples = sorted(((t, v) for _, v, t in _history(client, own, Metric.MEMORY_RSS_MB)))
    r.memory_samples = [((t - samples[0][0]) / 1000, v) for t, v in samples]
    r.breakdown = {k: v for k, v in source.data.metrics.items() if k.startswith("memory/")}
    r.breakdown_step = next((s for s, _, _ in reversed(_history(client, own, Metric.STEP_PEAK_MB))), None)
    return r


def parts(r: MethodResult, estimate: bool = False) -> dict[str, float | None]:
    """The breakdown's four parts (MiB), measured or by their formulas; None where not logged."""
    return {part: r.breakdown.get(Metric.memory_part(part, estimate)) for part in MemoryPart}


def environment_tags(tags: dict[str, str]) -> dict[str, str]:
    return {k.removeprefix(Tag.ENVIRONMENT): v for k, v in tags.items() if k.startswith(Tag.ENVIRONMENT)}


def gather(tracking_uri: str, parent_run_id: str) -> Comparison:
    client = MlflowClient(tracking_uri)
    parent = client.get_run(parent_run_id)
    runs = child_runs(client, parent_run_id)
    return Comparison(
        parent_run_id, parent.info.experiment_id, tracking_uri, parent.info.start_time,
        json.loads(parent.data.params.get(CONFIG_PARAM, "{}")), environment_tags(parent.data.tags),
        # with seed runs, the first one's histories: the plots draw each method's first seed
        [method_result(client, run, next(iter(seed_runs(client, run.info.run_id)), None)) for run in runs.values()],
    )
