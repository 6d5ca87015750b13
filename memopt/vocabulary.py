"""The tracking vocabulary: the MLflow experiment, tag, param and metric names that the training process,
the flow, the tasks, the report and the tests share. Each name is written here once. They are `StrEnum`s,
so a member is the plain string wherever MLflow takes one."""
from __future__ import annotations

from enum import StrEnum

EXPERIMENT = "memopt"  # every comparison's parent and child runs
CONFIG_PARAM = "config_json"  # the parent's whole configuration, read back by --resume


class Tag(StrEnum):
    PARENT = "mlflow.parentRunId"  # MLflow's own: the UI nests children under the parent
    METHOD = "memopt.method"
    FAILURE_REASON = "memopt.failure_reason"
    RESUMED_FROM_STEP = "memopt.resumed_from_step"
    SKIPPED_CHECKPOINTS = "memopt.skipped_checkpoints"  # damaged checkpoints a resume passed over, with why
    RESTARTED_FROM_ZERO = "memopt.restarted_from_step_0"  # no checkpoint, but the run already had metrics
    STOPPED_BY = "memopt.stopped_by"  # on runs ended KILLED: the signal, or the Prefect cancellation
    LONG_RUN = "memopt.long_run"  # the step count would take more than a day at the first steps' speed
    RESUMED_PARENT = "memopt.resumed_parent"  # on the run `mlflow run -P resume=ID` makes: the parent it finishes
    FAILED_METHODS = "memopt.failed_methods"
    PREFECT_FLOW_RUN = "memopt.prefect_flow_run_id"
    RANKS_IN_SYNC = "memopt.ranks_in_sync"
    ENVIRONMENT = "memopt.env."  # prefix: the comparison's environment (memopt/environment.py), one tag per fact

    @staticmethod
    def param_digest(rank: int) -> str:
        return f"memopt.param_digest.rank{rank}"


class Metric(StrEnum):
    # every step
    TRAIN_LOSS = "train_loss"
    LR = "lr"
    GRAD_NORM = "grad_norm"
    STEP_TIME_S = "step_time_s"
    TOKENS_PER_S = "tokens_per_s"
    EPOCH = "epoch"
    # every evaluation while training
    VAL_LOSS = "val_loss"
    VAL_PERPLEXITY = "val_perplexity"
    # the memory sampler (memopt/monitor.py), and once at the end
    MEMORY_RSS_MB = "memory_rss_mb"
    PEAK_RSS_MB = "peak_rss_mb"
    RSS_AT_START_MB = "rss_at_start_mb"
    CUDA_PEAK_ALLOCATED_MB = "cuda_peak_allocated_mb"
    OPTIMIZER_STATE_BYTES = "optimizer_state_bytes"
    EXPECTED_STATE_BYTES = "expected_state_bytes"
    TRAINABLE_PARAMS = "trainable_params"
    BEST_STEP = "best_step"
    # the evaluate task, on the final model
    FINAL_VAL_LOSS = "final_val_loss"
    PERPLEXITY = "perplexity"
    ANSWER_ACCURACY = "answer_accuracy"

    # the memory breakdown of one training step (memopt/breakdown.py), at that step
    STEP_PEAK_MB = "memory/step_peak_mb"  # the step's own peak: RSS on CPU, allocated on CUDA
    RUNTIME_MB = "memory/runtime_mb"  # RSS before the model was built (CPU; 0 on CUDA: no tensor of ours)
    REST_MB = "memory/rest_mb"  # the step's peak minus the runtime and every part

    @staticmethod
    def peak_rss_mb_rank(rank: int) -> str:
        return f"peak_rss_mb_rank{rank}"

    @staticmethod
    def memory_part(part: str, estimate: bool = False) -> str:
        """A part of the breakdown (MemoryPart), measured or by its formula."""
        return f"memory/{part}_{'estimate_' if estimate else ''}mb"

    @staticmethod
    def memory_at(phase: str, reading: str) -> str:
        """A reading (rss, cuda_allocated) at a phase boundary of the measured step (memopt.breakdown.PHASES)."""
        return f"memory/{reading}_at_{phase}_mb"


class MemoryPart(StrEnum):
    """The parts of a training step's memory, in the order they stack."""

    WEIGHTS = "weights"
    GRADIENTS = "gradients"
    OPTIMIZER_STATE = "optimizer_state"
    ACTIVATIONS = "activations"


class Param(StrEnum):
    """Params of a child run that the flow and the report read back."""

    TOTAL_STEPS = "total_steps"
    LR = "hp.lr"  # the learning rate the optimizer was built with (the method's own or the comparison's)
    DEVICE = "device"
    GRADIENT_CHECKPOINTING = "gradient_checkpointing"
    GLOBAL_BATCH_SIZE = "global_batch_size"
    SEQ_LEN = "seq_len"
    STEPS_PER_EPOCH = "steps_per_epoch"
