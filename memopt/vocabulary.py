"""The tracking vocabulary: the MLflow experiment, tag, param and metric names that the training process,
the flow, the tasks, the report and the tests share. Each name is written here once. They are `StrEnum`s,
so a member is the plain string wherever MLflow takes one."""
from __future__ import annotations

from enum import StrEnum

EXPERIMENT = "memopt"  # the default experiment of every comparison's runs (CompareConfig.experiment)
CONFIG_PARAM = "config_json"  # the parent's whole configuration, read back by --resume
EXPERIMENT_KIND, MODEL_TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"  # MLflow 3's experiment tag


class Role(StrEnum):
    """What a run of a comparison is (the tag `Tag.ROLE`; memopt/tracking.py draws the tree)."""

    METHOD = "method"  # one per method under the parent: the method's result over its seeds
    TRIAL = "trial"  # one per learning rate of the method's sweep, under the method's run
    SEED = "seed"  # one per seed of the method's final configuration, under the method's run
    BASE = "base"  # the fine-tune regime's base model, pretrained with AdamW, under the parent that made it


class Tag(StrEnum):
    PARENT = "mlflow.parentRunId"  # MLflow's own: the UI nests children under the parent
    METHOD = "memopt.method"
    FAILURE_REASON = "memopt.failure_reason"
    RESUMED_FROM_STEP = "memopt.resumed_from_step"
    # On a run `mlflow run` made that is not the comparison's parent (a resume, or a run in another experiment
    # than the comparison's): the parent run it points at.
    COMPARISON_PARENT = "memopt.comparison_parent"
    SKIPPED_CHECKPOINTS = "memopt.skipped_checkpoints"  # damaged checkpoints a resume passed over, with why
    RESTARTED_FROM_ZERO = "memopt.restarted_from_step_0"  # no checkpoint, but the run already had metrics
    STOPPED_BY = "memopt.stopped_by"  # on runs ended KILLED: the signal, or the Prefect cancellation
    LONG_RUN = "memopt.long_run"  # the step count would take more than a day at the first steps' speed
    FAILED_METHODS = "memopt.failed_methods"
    PREFECT_FLOW_RUN = "memopt.prefect_flow_run_id"
    DESCRIPTION = "mlflow.note.content"  # MLflow's own: the run page's Description (Markdown)
    RANKS_IN_SYNC = "memopt.ranks_in_sync"
    ROLE = "memopt.role"  # a Role
    TRIAL_LR = "memopt.trial_lr"  # on a trial: its learning rate, repr(float)
    SEED = "memopt.seed"  # on a seed run: its seed
    REGIME = "memopt.regime"  # on the parent and each method's run: pretrain or finetune
    LR_ON_EDGE = "memopt.lr_on_grid_edge"  # on a method's run: "lowest"/"highest" when the chosen lr is a grid end
    BASE_MODEL = "memopt.base_model"  # on the parent: the folder of the base model its methods fine-tuned
    BASE_MODEL_ID = "memopt.base_model_id"  # on the parent: that base model's MLflow LoggedModel id
    BASE_KEY = "memopt.base_key"  # on a base run: the digest of what the base model depends on
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
    # the evaluate task, on the final model and the whole validation split (the val_* above read eval_batches)
    FINAL_VAL_LOSS = "final_val_loss"
    INITIAL_VAL_LOSS = "initial_val_loss"  # on a method's run: the mean over its seed runs of val_loss at step 0
    FINAL_VAL_PERPLEXITY = "final_val_perplexity"
    ANSWER_ACCURACY = "answer_accuracy"

    # the memory breakdown of one training step (memopt/breakdown.py), at that step
    STEP_PEAK_MB = "memory/step_peak_mb"  # the step's own peak: RSS on CPU, allocated on CUDA
    RUNTIME_MB = "memory/runtime_mb"  # RSS before the model was built (CPU; 0 on CUDA: no tensor of ours)
    REST_MB = "memory/rest_mb"  # the step's peak minus the runtime and every part

    @staticmethod
    def peak_rss_mb_rank(rank: int) -> str:
        return f"peak_rss_mb_rank{rank}"

    @staticmethod
    def over_seeds(key: str, statistic: str) -> str:
        """On a method's run: `statistic` (std, min, max) of `key` over its seed runs; the mean is `key` itself."""
        return f"{key}_{statistic}"

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


# A method's numbers that its parent run carries as `METHOD.KEY` (summary_metric) once the method has finished,
# so that the chart view compares the methods of a comparison without expanding its children.
SUMMARY_METRICS = (Metric.FINAL_VAL_LOSS, Metric.FINAL_VAL_PERPLEXITY, Metric.ANSWER_ACCURACY, Metric.TRAIN_LOSS,
                   Metric.PEAK_RSS_MB, Metric.OPTIMIZER_STATE_BYTES)


def summary_metric(method: str, key: str) -> str:
    return f"{method}.{key}"


class Param(StrEnum):
    """Params of a child run that the flow and the report read back."""

    TOTAL_STEPS = "total_steps"
    LR = "lr"  # the learning rate the optimizer was built with (the method's own or the comparison's)
    DEVICE = "device"
    GRADIENT_CHECKPOINTING = "gradient_checkpointing"
    GLOBAL_BATCH_SIZE = "global_batch_size"
    SEQ_LEN = "seq_len"
    STEPS_PER_EPOCH = "steps_per_epoch"
    SEED = "seed"
    # on a method's run
    LR_GRID = "lr_grid"  # the learning rates its sweep tried, comma-separated
    CHOSEN_LR = "chosen_lr"  # the lr its seed runs trained at
    LR_SOURCE = "lr_source"  # where that lr came from: sweep, --lr, method_args, or the method's default
    SEEDS = "seeds"  # its seed runs' seeds, comma-separated
