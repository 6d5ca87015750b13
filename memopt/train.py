"""The training process: one method, one OS process, one MLflow child run.

    python -m memopt.train CONFIG.json

Run by the train task (tasks/train.py), which creates the child run and hands
its id in. A process of its own gives each method its own peak memory and keeps
a crash its own. If the output folder holds a checkpoint, training resumes from
it into the same run; metrics already in the store are not logged again.

Exit codes: 0 done, 3 the loss became NaN or inf (retrying cannot help), 1 any
other failure. The reason goes to the run as the tag `memopt.failure_reason`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from memopt import checkpoint, optim
from memopt.data import TokenizedData
from memopt.evaluation import perplexity, validation_loss
from memopt.memory import optimizer_state_bytes
from memopt.methods import grad_accum_steps, recipe
from memopt.models import build_model
from memopt.optim.reparam import merged_state_dict
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

    @classmethod
    def from_json(cls, path: str | Path) -> "TrainConfig":
        return cls(**json.loads(Path(path).read_text()))

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=2))


class NonFiniteLoss(RuntimeError):
    pass


def total_steps(cfg: TrainConfig, n_blocks: int) -> int:
    steps_per_epoch = n_blocks // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the {n_blocks} training blocks")
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
    dense = build_model(cfg.model_name, vocab_size=vocab_size, seed=cfg.seed)
    dense.load_state_dict(merged_state_dict(model))
    return dense


def train(cfg: TrainConfig) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(cfg.output_dir)
    ckpt_dir = out / "checkpoints"
    logger = RunLogger(cfg.tracking_uri, cfg.run_id)
    rss_at_start = rss_bytes()
    system_monitor = None
    if cfg.system_metrics:  # by run id: no active run needed (MLflow's active run is per thread)
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        system_monitor = SystemMetricsMonitor(
            cfg.run_id, sampling_interval=cfg.system_metrics_interval_s, resume_logging=True, tracking_uri=cfg.tracking_uri
        )
        system_monitor.start()
    try:
        data = TokenizedData(Path(cfg.data_dir))
        train_blocks, val_blocks = data.blocks("train"), data.blocks("validation")
        seq_len = train_blocks.shape[1]
        r = recipe(cfg.method)
        accum = grad_accum_steps(r, cfg.batch_size)
        steps = total_steps(cfg, len(train_blocks))

        model = build_model(cfg.model_name, vocab_size=data.vocab_size, seed=cfg.seed).to(device)
        if r.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        model.config.use_cache = False
        hp = {**cfg.method_args, **({"lr": cfg.lr} if cfg.lr is not None else {})}
        optimizer = optim.build(r.optimizer, model, **hp)
        scheduler = get_cosine_with_min_lr_schedule_with_warmup(
            optimizer, int(cfg.warmup_ratio * steps), steps, min_lr_rate=cfg.min_lr_ratio
        )
        amp, scaler = autocast_context(device, r.mixed_precision)

        start_step = 0
        resume_from = checkpoint.latest(ckpt_dir)
        if resume_from is not None:
            state = checkpoint.load(resume_from, model)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if scaler is not None:
                scaler.load_state_dict(state["scaler"])
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
                "grad_accum_steps": accum,
                "seq_len": seq_len,
                "total_steps": steps,
                "steps_per_epoch": len(train_blocks) // cfg.batch_size,
                "device": device.type,
                "n_params": sum(p.numel() for p in model.parameters()),
            }
        )

        def evaluate(step: int) -> None:
            loss = validation_loss(model, val_blocks, cfg.batch_size, cfg.eval_batches)
            logger.metrics({"val_loss": loss, "val_perplexity": perplexity(loss)}, step)

        def on_sample(s: MemorySample) -> None:
            logger.metrics(s.values_mb, s.step, s.timestamp_ms)

        tokens_per_step = cfg.batch_size * seq_len
        with MemorySampler(cfg.memory_interval_s, on_sample) as sampler:
            if start_step == 0:
                evaluate(0)
            bar = tqdm(range(start_step, steps), desc=cfg.method, initial=start_step, total=steps, file=sys.stderr)
            for step in bar:
                sampler.step = step + 1
                t0 = time.perf_counter()
                batch = train_blocks[batch_indices(step, len(train_blocks), cfg.batch_size, cfg.seed)].to(device)
                loss_sum = torch.zeros((), device=device)
                for micro in batch.chunk(accum):
                    with amp:
                        loss = model(input_ids=micro, labels=micro).loss / accum
                    (scaler.scale(loss) if scaler else loss).backward()
                    loss_sum += loss.detach().float()
                train_loss = loss_sum.item()
                if not torch.isfinite(loss_sum):
                    raise NonFiniteLoss(f"train_loss became {train_loss} at step {step + 1}")
                if scaler is not None:
                    scaler.unscale_(optimizer)
                grads = [p.grad for p in model.parameters() if p.grad is not None]
                grad_norm = torch.nn.utils.get_total_norm(grads).item() if grads else 0.0
                lr = optimizer.param_groups[0]["lr"]
                if scaler is None or torch.isfinite(torch.tensor(grad_norm)):  # GradScaler skips inf/NaN steps
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
                        "grad_norm": grad_norm,
                        "step_time_s": step_time,
                        "tokens_per_s": tokens_per_step / step_time,
                        "epoch": step * cfg.batch_size / len(train_blocks),
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
                if done % cfg.checkpoint_every == 0 or done == steps:
                    logger.flush()  # metrics up to `done` are stored before the checkpoint that skips them
                    state = {
                        "step": done,
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "rng": checkpoint.rng_state(),
                    }
                    if scaler is not None:
                        state["scaler"] = scaler.state_dict()
                    checkpoint.save(ckpt_dir, done, model, state)

        logger.metrics(
            {
                "peak_rss_mb": peak_rss_bytes() / MIB,
                "rss_at_start_mb": rss_at_start / MIB,
                "expected_state_bytes": optim.expected_state_bytes(r.optimizer, model, **hp),
                **({"cuda_peak_allocated_mb": torch.cuda.max_memory_allocated() / MIB} if device.type == "cuda" else {}),
            },
            steps,
        )
        final = out / "final"
        dense_model(model, cfg, data.vocab_size).save_pretrained(final, safe_serialization=True)
        data.tokenizer().save_pretrained(final)
        logger.flush()
        logger.client.log_artifacts(cfg.run_id, str(final), "model")
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}"
        print(traceback.format_exc(), file=sys.stderr)
        logger.tags({FAILURE_TAG: reason[:5000]})
        raise
    finally:
        if system_monitor is not None:
            system_monitor.finish()
        logger.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
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
