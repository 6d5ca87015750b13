"""The training process: one method, one OS process, one MLflow child run.

    python -m memopt.train CONFIG.json

Run by the train task (tasks/train.py), which creates the child run and hands
its id in. A process of its own gives each method its own peak memory and keeps
a crash its own. If the output folder holds a checkpoint, training resumes from
it into the same run; metrics already in the store are not logged again.

Exit codes: 0 done, 3 the loss became NaN or inf (retrying cannot help), 1 any
other failure. The reason goes to the run as the tag `memopt.failure_reason`.

Under torchrun (several processes, memopt/distributed.py) every rank runs this
same loop on its slice of each global batch; only rank 0 logs, evaluates and
writes checkpoints. The training options shared by every method (batch
geometry, warm-up, dtype, clipping, best model) are described in memopt/options.py.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from memopt import checkpoint, distributed, optim
from memopt.blocks import TokenizedData
from memopt.evaluation import perplexity, validation_loss
from memopt.loss import CausalLMLoss
from memopt.memory import optimizer_state_bytes
from memopt.methods import grad_accum_steps, recipe, run_hyperparameters
from memopt.models import build_model
from memopt.optim.reparam import merged_state_dict
from memopt.options import DTYPES, BestTracker, accumulation_steps, check_training_options, clip_, warmup
from memopt.monitor import MIB, MemorySample, MemorySampler, peak_rss_bytes, rss_bytes
from memopt.tracking import RunLogger

EXIT_NONFINITE = 3
FAILURE_TAG = "memopt.failure_reason"


@dataclass
class TrainConfig:
    method: str
    model_name: str
    data_dir: str  # a TokenizedData folder
    output_dir: str  # this method's own folder: checkpoints/ and final/
    run_id: str  # the MLflow child run, created by the task
    tracking_uri: str
    batch_size: int = 8
    epochs: int = 1
    max_steps: int = 0  # > 0 overrides epochs, as in transformers' Trainer
    lr: float | None = None  # None: the method's own default
    warmup_ratio: float = 0.1
    min_lr_ratio: float = 0.1
    eval_every: int = 50
    eval_batches: int = 8
    checkpoint_every: int = 50
    seed: int = 0
    memory_interval_s: float = 0.1
    system_metrics: bool = False  # MLflow's own system metrics (system/cpu_utilization_percentage, ...) in this run
    system_metrics_interval_s: float = 10.0
    method_args: dict[str, Any] = field(default_factory=dict)
    # memopt/options.py
    total_batch_size: int = 0  # sequences per optimizer step; 0: batch_size × world size (no accumulation)
    warmup_steps: int | None = None  # None: warmup_ratio × steps
    dtype: str = "fp32"  # the weights' dtype: fp32 or bf16
    grad_clip: float = 0.0  # max total gradient norm; 0: off
    save_total_limit: int = 1  # checkpoints kept
    metric_for_best_model: str = ""  # "": the last model is the final one; val_loss or val_perplexity
    # memopt/distributed.py: read by the train task, which launches torchrun when their product is > 1
    nproc_per_node: int = 1
    nnodes: int = 1
    rdzv_endpoint: str = ""

    @classmethod
    def from_json(cls, path: str | Path) -> "TrainConfig":
        return cls(**json.loads(Path(path).read_text()))

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=2))


class NonFiniteLoss(RuntimeError):
    pass


class _NoLogger:
    """What ranks other than 0 log: nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def total_steps(cfg: TrainConfig, n_blocks: int, global_batch: int | None = None) -> int:
    global_batch = global_batch or cfg.batch_size
    steps_per_epoch = n_blocks // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"a step's {global_batch} sequences are more than the {n_blocks} training blocks")
    return cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * steps_per_epoch


def batch_indices(step: int, n_blocks: int, batch_size: int, seed: int) -> torch.Tensor:
    """The blocks of global step `step`: a fresh seeded permutation each epoch, so a resume needs only the step."""
    steps_per_epoch = n_blocks // batch_size
    epoch, k = divmod(step, steps_per_epoch)
    order = torch.randperm(n_blocks, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return order[k * batch_size : (k + 1) * batch_size]


def autocast_context(device: torch.device, enabled: bool) -> tuple[contextlib.AbstractContextManager, torch.amp.GradScaler | None]:
    if not enabled:
        return contextlib.nullcontext(), None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16), None


def dense_model(model: torch.nn.Module, cfg: TrainConfig, vocab_size: int) -> torch.nn.Module:
    """The model as its architecture defines it: reparameterized linears (Low-Rank, SLTrain, ...) merged
    back into dense weights, so the exported model loads anywhere."""
    if not any(hasattr(m, "dense_weight") for m in model.modules()):
        return model
    dense = build_model(cfg.model_name, vocab_size=vocab_size, seed=cfg.seed).to(DTYPES[cfg.dtype])
    dense.load_state_dict(merged_state_dict(model))
    return dense


def export_model(model: torch.nn.Module, cfg: TrainConfig, data: TokenizedData, folder: Path) -> None:
    """save_pretrained into a temporary folder renamed into place: a kill leaves the previous export whole."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    dense_model(model, cfg, data.vocab_size).save_pretrained(tmp, safe_serialization=True)
    data.tokenizer().save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def train(cfg: TrainConfig) -> None:
    world = distributed.setup()
    device = world.device
    out = Path(cfg.output_dir)
    ckpt_dir = out / "checkpoints"
    logger = RunLogger(cfg.tracking_uri, cfg.run_id) if world.is_main else _NoLogger()
    rss_at_start = rss_bytes()
    system_monitor = None
    if cfg.system_metrics:  # by run id: no active run needed (MLflow's active run is per thread)
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        system_monitor = SystemMetricsMonitor(
            cfg.run_id, sampling_interval=cfg.system_metrics_interval_s, resume_logging=True, tracking_uri=cfg.tracking_uri
        )
        system_monitor.start()
    try:
        check_training_options(
            batch_size=cfg.batch_size, total_batch_size=cfg.total_batch_size, world_size=world.world_size,
            warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps, dtype=cfg.dtype, grad_clip=cfg.grad_clip,
            save_total_limit=cfg.save_total_limit, metric_for_best_model=cfg.metric_for_best_model,
        )
        data = TokenizedData(Path(cfg.data_dir))
        train_blocks, val_blocks = data.blocks("train"), data.blocks("validation")
        seq_len = train_blocks.shape[1]
        r = recipe(cfg.method)
        chunks = grad_accum_steps(r, cfg.batch_size)  # the recipe's micro-batches of each per-process batch
        accum = accumulation_steps(cfg.total_batch_size, cfg.batch_size, world.world_size)
        global_batch = cfg.batch_size * world.world_size * accum
        steps = total_steps(cfg, len(train_blocks), global_batch)

        model = build_model(cfg.model_name, vocab_size=data.vocab_size, seed=cfg.seed).to(device, DTYPES[cfg.dtype])
        if r.gradient_checkpointing:
            # DDP needs the non-reentrant form (the reentrant one marks parameters ready twice)
            model.gradient_checkpointing_enable({"use_reentrant": False} if world.distributed else None)
        model.config.use_cache = False
        hp = {
            **run_hyperparameters(r.optimizer, steps, accum * chunks),
            **cfg.method_args,
            **({"lr": cfg.lr} if cfg.lr is not None else {}),
        }
        optimizer = optim.build(r.optimizer, model, **hp)
        # after the optimizer: it may freeze or reparameterize tensors
        forward = distributed.wrap(CausalLMLoss(model), world)
        scheduler = get_cosine_with_min_lr_schedule_with_warmup(
            optimizer, warmup(cfg.warmup_steps, cfg.warmup_ratio, steps), steps, min_lr_rate=cfg.min_lr_ratio
        )
        amp, scaler = autocast_context(device, r.mixed_precision)
        best = BestTracker(cfg.metric_for_best_model)

        start_step = 0
        resume_from = checkpoint.latest(ckpt_dir)
        if resume_from is not None:
            state = checkpoint.load(resume_from, model)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if scaler is not None:
                scaler.load_state_dict(state["scaler"])
            if "best" in state:
                best.load_state_dict(state["best"])
            checkpoint.set_rng_state(state["rng"])
            start_step = int(state["step"])
            logger.tags({"memopt.resumed_from_step": str(start_step)})
        else:
            torch.manual_seed(cfg.seed)

        logger.params(
            {
                **{k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("run_id", "tracking_uri", "method_args")},
                **{f"hp.{k}": v for k, v in optim.hyperparameters(r.optimizer, **hp).items()},
                "optimizer": r.optimizer,
                "mixed_precision": r.mixed_precision,
                "gradient_checkpointing": r.gradient_checkpointing,
                "grad_accum_steps": accum * chunks,
                "world_size": world.world_size,
                "global_batch_size": global_batch,
                "seq_len": seq_len,
                "total_steps": steps,
                "steps_per_epoch": len(train_blocks) // global_batch,
                "device": device.type,
                "n_params": sum(p.numel() for p in model.parameters()),
            }
        )

        def evaluate(step: int) -> None:
            if not world.is_main:
                return
            loss = validation_loss(model, val_blocks, cfg.batch_size, cfg.eval_batches)
            values = {"val_loss": loss, "val_perplexity": perplexity(loss)}
            logger.metrics(values, step)
            if step > 0 and best.improved(values, step):  # the untrained model never counts
                export_model(model, cfg, data, out / "best")

        def on_sample(s: MemorySample) -> None:
            logger.metrics(s.values_mb, s.step, s.timestamp_ms)

        tokens_per_step = global_batch * seq_len
        n_micro = accum * chunks
        sampler_ctx = MemorySampler(cfg.memory_interval_s, on_sample) if world.is_main else contextlib.nullcontext()
        with sampler_ctx as sampler:
            if start_step == 0:
                evaluate(0)
            bar = tqdm(range(start_step, steps), desc=cfg.method, initial=start_step, total=steps, file=sys.stderr,
                       disable=not world.is_main)
            for step in bar:
                if sampler is not None:
                    sampler.step = step + 1
                t0 = time.perf_counter()
                # this rank's rows of the global batch: accumulation round a, rank r -> rows [(a*world + r)*bs, +bs)
                rows = batch_indices(step, len(train_blocks), global_batch, cfg.seed).view(accum, world.world_size, -1)
                loss_sum = torch.zeros((), device=device)
                for a in range(accum):
                    batch = train_blocks[rows[a, world.rank]].to(device)
                    for c, micro in enumerate(batch.chunk(chunks)):
                        with distributed.no_sync(forward, skip=(a, c) != (accum - 1, chunks - 1)):
                            with amp:
                                loss = forward(micro) / n_micro
                            (scaler.scale(loss) if scaler else loss).backward()
                        loss_sum += loss.detach().float()
                loss_sum = distributed.mean(loss_sum, world)  # every rank sees (and stops on) the same loss
                train_loss = loss_sum.item()
                if not torch.isfinite(loss_sum):
                    raise NonFiniteLoss(f"train_loss became {train_loss} at step {step + 1}")
                if scaler is not None:
                    scaler.unscale_(optimizer)
                with_grad = [p for p in model.parameters() if p.grad is not None]
                norm = torch.nn.utils.get_total_norm([p.grad for p in with_grad]) if with_grad else torch.zeros(())
                grad_norm = norm.item()
                lr = optimizer.param_groups[0]["lr"]
                if scaler is None or torch.isfinite(norm):  # GradScaler skips inf/NaN steps
                    clip_(with_grad, cfg.grad_clip, norm)
                    optimizer.step(lambda: loss_sum)
                if scaler is not None:
                    scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step_time = time.perf_counter() - t0
                done = step + 1
                logger.metrics(
                    {
                        "train_loss": train_loss,
                        "lr": lr,
                        # no gradients left to measure when the update ran inside backward (layer-wise)
                        **({"grad_norm": grad_norm} if with_grad else {}),
                        "step_time_s": step_time,
                        "tokens_per_s": tokens_per_step / step_time,
                        "epoch": step * global_batch / len(train_blocks),
                    },
                    done,
                )
                bar.set_postfix(loss=f"{train_loss:.3f}")
                if done == start_step + 1 or done % cfg.eval_every == 0 or done == steps:
                    logger.metrics(
                        {
                            "optimizer_state_bytes": optimizer_state_bytes(optimizer),
                            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                        },
                        done,
                    )
                if done % cfg.eval_every == 0 or done == steps:
                    evaluate(done)
                if world.is_main and (done % cfg.checkpoint_every == 0 or done == steps):
                    logger.flush()  # metrics up to `done` are stored before the checkpoint that skips them
                    state = {
                        "step": done,
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "rng": checkpoint.rng_state(),
                        "best": best.state_dict(),
                    }
                    if scaler is not None:
                        state["scaler"] = scaler.state_dict()
                    checkpoint.save(ckpt_dir, done, model, state, keep=cfg.save_total_limit)

        ranks = distributed.gather({"peak_rss": peak_rss_bytes(), "digest": distributed.param_digest(model)}, world)
        if world.distributed:
            logger.metrics({f"peak_rss_mb_rank{i}": x["peak_rss"] / MIB for i, x in enumerate(ranks)}, steps)
            logger.tags({f"memopt.param_digest.rank{i}": x["digest"] for i, x in enumerate(ranks)})
            logger.tags({"memopt.ranks_in_sync": str(len({x["digest"] for x in ranks}) == 1).lower()})
        logger.metrics(
            {
                "peak_rss_mb": peak_rss_bytes() / MIB,
                "rss_at_start_mb": rss_at_start / MIB,
                "expected_state_bytes": optim.expected_state_bytes(r.optimizer, model, **hp),
                **({"cuda_peak_allocated_mb": torch.cuda.max_memory_allocated() / MIB} if device.type == "cuda" else {}),
                **({"best_step": best.step, f"best_{best.metric}": best.value} if best.step is not None else {}),
            },
            steps,
        )
        if world.is_main:
            final = out / "final"
            if best.step is not None:  # the best evaluation's model is the final one
                shutil.rmtree(final, ignore_errors=True)
                shutil.copytree(out / "best", final)
            else:
                export_model(model, cfg, data, final)
            logger.flush()
            logger.client.log_artifacts(cfg.run_id, str(final), "model")
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}"
        print(f"[rank {world.rank}] {traceback.format_exc()}", file=sys.stderr)
        logger.tags({FAILURE_TAG: reason[:5000]})
        raise
    finally:
        if system_monitor is not None:
            system_monitor.finish()
        logger.close()
        distributed.teardown(world)


def die_with_parent() -> None:
    """Linux: get SIGKILL when the process that started this one dies. A flow killed with kill -9 would
    otherwise leave this process training on, into the checkpoints and the run a resume is about to use."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import os
    import signal

    parent = os.getppid()
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    die_with_parent()
    if len(args) != 1:
        print("usage: python -m memopt.train CONFIG.json", file=sys.stderr)
        return 2
    try:
        train(TrainConfig.from_json(args[0]))
    except NonFiniteLoss:
        return EXIT_NONFINITE
    except Exception:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
