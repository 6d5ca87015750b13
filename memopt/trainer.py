"""The training engine: one method's model, optimizer and schedule, stepped through the data.

    trainer = Trainer(cfg, world, logger)    # build: data, model, optimizer, schedule; resume if a checkpoint is there
    trainer.fit()                            # train_step, evaluate and save, step by step
    trainer.finish()                         # the last metrics and the final model

`state_dict()`/`load_state_dict()` are the trainer's whole resumable state (weights apart, which go to
safetensors): one definition, used by every checkpoint and every resume. The training options every
method shares are explained in memopt/options.py; the process around this is memopt/train.py.
"""
from __future__ import annotations

import contextlib
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from memopt import checkpoint, distributed, optim, tracking
from memopt.breakdown import StepMemory
from memopt.blocks import TokenizedData
from memopt.config import TrainConfig
from memopt.distributed import World
from memopt.evaluation import perplexity, validation_loss
from memopt.loss import CausalLMLoss
from memopt.memory import optimizer_state_bytes
from memopt.methods import grad_accum_steps, recipe, run_hyperparameters
from memopt.models import build_model
from memopt.monitor import MIB, MemorySampler, cuda_peak_allocated_bytes, peak_rss_bytes, rss_bytes
from memopt.optim.reparam import merged_state_dict
from memopt.options import DTYPES, BestTracker, clip_, warmup
from memopt.progress import ProgressReporter, duration
from memopt.vocabulary import Metric, Tag


class NonFiniteLoss(RuntimeError):
    pass


LONG_RUN_S = 24 * 3600  # a run longer than this at its first steps' speed says so
TIMED_STEPS = 3  # steps timed for that estimate, after the first (which warms up)


def total_steps(max_steps: int, epochs: int, n_blocks: int, global_batch: int) -> int:
    steps_per_epoch = n_blocks // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"a step's {global_batch} sequences are more than the {n_blocks} training blocks")
    return max_steps if max_steps > 0 else epochs * steps_per_epoch


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


class Trainer:
    def __init__(self, cfg: TrainConfig, world: World, logger: Any):
        self.cfg, self.opts, self.world, self.log = cfg, cfg.training, world, logger
        self.out = Path(cfg.output_dir)
        if world.world_size != self.opts.world_size:
            raise ValueError(f"torchrun started {world.world_size} processes; the configuration says "
                             f"nproc_per_node × nnodes = {self.opts.world_size}")
        self.data = TokenizedData(Path(cfg.data_dir))
        self.train_blocks, self.val_blocks = self.data.blocks("train"), self.data.blocks("validation")
        self.recipe = recipe(cfg.method)
        self.chunks = grad_accum_steps(self.recipe, self.opts.batch_size)  # the recipe's micro-batches
        self.micro_batches = self.opts.accumulation_steps * self.chunks
        if self.micro_batches > 1 and optim.spec(self.recipe.optimizer).owns_backward:  # CompareConfig refuses it first
            raise ValueError(f"{cfg.method} updates inside its backward: one backward per step, not {self.micro_batches}")
        self.global_batch = self.opts.global_batch_size
        self.steps = total_steps(self.opts.max_steps, self.opts.epochs, len(self.train_blocks), self.global_batch)
        self.rss_before_model = rss_bytes()  # Python, the libraries and the data: the baseline of "training memory"
        cuda_before_model = torch.cuda.memory_allocated() if world.device.type == "cuda" else 0
        self.model = self._build_model()
        self.hp = {
            **run_hyperparameters(self.recipe.optimizer, self.steps, self.micro_batches, self.opts.seed),
            **cfg.method_args,
            **({"lr": self.opts.lr} if self.opts.lr is not None else {}),
        }
        self.optimizer = optim.build(self.recipe.optimizer, self.model, **self.hp)
        # after the optimizer: it may freeze or reparameterize tensors
        self.forward = distributed.wrap(CausalLMLoss(self.model), world)
        self.scheduler = get_cosine_with_min_lr_schedule_with_warmup(
            self.optimizer, warmup(self.opts.warmup_steps, self.opts.warmup_ratio, self.steps), self.steps,
            min_lr_rate=self.opts.min_lr_ratio,
        )
        self.amp, self.scaler = autocast_context(world.device, self.recipe.mixed_precision)
        self.best = BestTracker(self.opts.metric_for_best_model)
        plain = not (self.recipe.mixed_precision or self.recipe.gradient_checkpointing)  # the activation formula's case
        self.memory = StepMemory(
            self.model, self.optimizer, world.device, cuda_before_model or self.rss_before_model,
            lambda: optim.expected_state_bytes(self.recipe.optimizer, self.model, **self.hp),
            (self.opts.batch_size // self.chunks, self.train_blocks.shape[1]) if plain else None,
        )
        self.step = 0
        self.train_seconds = 0.0  # the training steps' own time so far (no evaluation, no checkpoints)
        self.sampler: MemorySampler | None = None
        self._step_times: list[float] = []  # this process's first steps, for the run's length (_say_if_long)
        self._resume()

    def _build_model(self) -> torch.nn.Module:
        model = build_model(self.cfg.model_name, vocab_size=self.data.vocab_size, seed=self.opts.seed,
                            pretrained=not self.cfg.random_init)
        model = model.to(self.world.device, DTYPES[self.opts.dtype])
        if self.recipe.gradient_checkpointing:
            # DDP needs the non-reentrant form (the reentrant one marks parameters ready twice)
            model.gradient_checkpointing_enable({"use_reentrant": False} if self.world.distributed else None)
        model.config.use_cache = False
        return model

    # --- the resumable state ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": checkpoint.rng_state(),
            "best": self.best.state_dict(),
            "train_seconds": self.train_seconds,
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.best.load_state_dict(state["best"])
        checkpoint.set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.train_seconds = float(state.get("train_seconds", 0.0))  # absent in checkpoints of older versions

    def _resume(self) -> None:
        """From the newest checkpoint that reads whole (checkpoint.resume); a run is never started again from step 0
        without saying so."""
        directory = self.out / "checkpoints"
        found = checkpoint.resume(directory, self.model)
        if found is None:
            torch.manual_seed(self.opts.seed)
            last = self.log.last_logged_step()
            if last is not None and last >= 0:  # a process that died before its first checkpoint, or one deleted
                self._say(Tag.RESTARTED_FROM_ZERO, f"no checkpoint in {directory}: trained again from step 0; the run's "
                          f"metrics through step {last} were logged before and are not logged again")
            return
        state, _, skipped = found
        self.load_state_dict(state)
        self.log.tags({Tag.RESUMED_FROM_STEP: str(self.step)})
        if skipped:
            self._say(Tag.SKIPPED_CHECKPOINTS, f"resumed from step {self.step}, skipping {'; '.join(skipped)}")

    def _say(self, tag: Tag, message: str) -> None:
        """A fact about this run worth more than a log line: a tag on the run, and a line on stderr."""
        self.log.tags({tag: message[:5000]})
        if self.world.is_main:
            print(f"{self.cfg.method}: {message}", file=sys.stderr)

    def save_checkpoint(self) -> None:
        if self.world.is_main:
            self.log.flush()  # metrics up to this step are stored before the checkpoint that skips them
            checkpoint.save(self.out / "checkpoints", self.step, self.model, self.state_dict(),
                            keep=self.opts.save_total_limit)

    # --- the loop ---------------------------------------------------------------------------
    def log_params(self) -> None:
        """The values this run used: an option left unset is logged as what it resolved to (`lr`, the
        method's own; `warmup_steps`, from warmup_ratio), or not at all when nothing stands in for it."""
        hp = optim.hyperparameters(self.recipe.optimizer, **self.hp)
        options = {**self.opts.model_dump(), "lr": hp.pop("lr", self.opts.lr),
                   "warmup_steps": warmup(self.opts.warmup_steps, self.opts.warmup_ratio, self.steps)}
        self.log.params({
            **self.cfg.model_dump(exclude={"run_id", "tracking_uri", "method_args", "training"}),
            **{k: v for k, v in options.items() if v not in (None, "")},
            **{f"hp.{k}": v for k, v in hp.items()},
            "optimizer": self.recipe.optimizer,
            "mixed_precision": self.recipe.mixed_precision,
            "gradient_checkpointing": self.recipe.gradient_checkpointing,
            "grad_accum_steps": self.micro_batches,
            "world_size": self.world.world_size,
            "global_batch_size": self.global_batch,
            "seq_len": self.train_blocks.shape[1],
            "total_steps": self.steps,
            "steps_per_epoch": len(self.train_blocks) // self.global_batch,
            "device": self.world.device.type,
            "n_params": sum(p.numel() for p in self.model.parameters()),
        })

    def fit(self) -> None:
        on_sample = lambda s: self.log.metrics(s.values_mb, s.step, s.timestamp_ms)  # noqa: E731
        with MemorySampler(self.opts.memory_interval_s, on_sample) if self.world.is_main else contextlib.nullcontext() as sampler:
            self.sampler = sampler
            first = self.step + 1  # the state's size is logged at the first step this process runs, a resume's too
            # the breakdown: step 2, once the state exists and past BlockLLM's one-off first selection
            self.memory.at_step = max(first, min(2, self.steps))
            if self.step == 0 and self.cfg.evaluate_at_start:
                self.evaluate()
            progress = ProgressReporter(self.steps, self.step, self.opts.progress_every,
                                        self.global_batch * self.train_blocks.shape[1])
            while self.step < self.steps:
                loss = self.train_step()
                if self.step == first + TIMED_STEPS:
                    self._say_if_long()
                if self.step == first or self.step % self.opts.eval_every == 0 or self.step == self.steps:
                    self.log.metrics({
                        Metric.OPTIMIZER_STATE_BYTES: optimizer_state_bytes(self.optimizer),
                        Metric.TRAINABLE_PARAMS: sum(p.numel() for p in self.model.parameters() if p.requires_grad),
                    }, self.step)
                val_loss = None
                if self.step % self.opts.eval_every == 0 or self.step == self.steps:
                    val_loss = self.evaluate()
                if self.world.is_main:
                    progress.update(self.step, loss, self.train_seconds, val_loss)
                if self.step % self.opts.checkpoint_every == 0 or self.step == self.steps:
                    self.save_checkpoint()

    def _say_if_long(self) -> None:
        """A step count that would take more than a day at the speed of this process's first steps is said at once,
        on the process's output and as a tag, rather than found out from the progress lines' estimate."""
        timed = sorted(self._step_times[1:])
        step_s = timed[len(timed) // 2]
        seconds = (self.steps - self.step) * step_s
        if seconds > LONG_RUN_S:
            message = (f"{self.steps:,} steps at {step_s:.2g} s a step would take about {duration(seconds)}, more than "
                       "a day: lower --max_steps or --epochs if that is not what you meant")
            if self.world.is_main:
                print(f"{self.cfg.method}: warning: {message}", file=sys.stderr, flush=True)
            self.log.tags({Tag.LONG_RUN: message})

    def train_step(self) -> float:
        """One optimizer step over the global batch: this rank's rows, accumulated; returns the mean loss."""
        if self.sampler is not None:
            self.sampler.step = self.step + 1
        t0 = time.perf_counter()
        with self.memory.measuring(self.step + 1):
            loss = self._forward_backward()
            self.memory.boundary("backward")
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"train_loss became {loss.item()} at step {self.step + 1}")
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            with_grad = [p for p in self.model.parameters() if p.grad is not None]
            norm = torch.nn.utils.get_total_norm([p.grad for p in with_grad]) if with_grad else torch.zeros(())
            lr = float(self.optimizer.param_groups[0]["lr"])  # torchao keeps it as a tensor
            if self.scaler is None or torch.isfinite(norm):  # GradScaler skips inf/NaN steps
                clip_(with_grad, self.opts.grad_clip, norm)
                self.optimizer.step(lambda: loss)
            self.memory.boundary("optimizer_step")
        if self.scaler is not None:
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        step_time = time.perf_counter() - t0
        if len(self._step_times) <= TIMED_STEPS:
            self._step_times.append(step_time)
        self.step += 1
        self.train_seconds += step_time
        breakdown = self.memory.take()
        self.log.metrics({
            Metric.TRAIN_LOSS: loss.item(),
            Metric.LR: lr,
            # no gradients left to measure when the update ran inside backward (layer-wise)
            **({Metric.GRAD_NORM: norm.item()} if with_grad else {}),
            Metric.STEP_TIME_S: step_time,
            # the run so far: every token trained ÷ the training steps' time (the report's Tokens/s is the last one)
            Metric.TOKENS_PER_S: self.step * self.global_batch * self.train_blocks.shape[1] / self.train_seconds,
            Metric.EPOCH: (self.step - 1) * self.global_batch / len(self.train_blocks),
            **(breakdown.metrics() if breakdown is not None else {}),
        }, self.step)
        return loss.item()

    def _forward_backward(self) -> torch.Tensor:
        world, accum = self.world, self.opts.accumulation_steps
        # this rank's rows of the global batch: accumulation round a, rank r -> rows [(a*world + r)*bs, +bs)
        rows = batch_indices(self.step, len(self.train_blocks), self.global_batch, self.opts.seed)
        rows = rows.view(accum, world.world_size, -1)
        loss_sum = torch.zeros((), device=world.device)
        for a in range(accum):
            batch = self.train_blocks[rows[a, world.rank]].to(world.device)
            for c, micro in enumerate(batch.chunk(self.chunks)):
                with distributed.no_sync(self.forward, skip=(a, c) != (accum - 1, self.chunks - 1)):
                    with self.amp:
                        loss = self.forward(micro) / self.micro_batches
                    self.memory.boundary("forward")
                    # loss.backward(), or the optimizer's own (AdaLomo updates inside it: its MethodSpec says so)
                    optim.backward(self.recipe.optimizer, self.optimizer,
                                   self.scaler.scale(loss) if self.scaler else loss)
                loss_sum += loss.detach().float()
        return distributed.mean(loss_sum, world)  # every rank sees (and stops on) the same loss

    def evaluate(self) -> float | None:
        """The validation loss on eval_batches batches (rank 0; None elsewhere), logged."""
        if not self.world.is_main:
            return None
        loss = validation_loss(self.model, self.val_blocks, self.opts.batch_size, self.opts.eval_batches)
        values = {Metric.VAL_LOSS: loss, Metric.VAL_PERPLEXITY: perplexity(loss)}
        self.log.metrics(values, self.step)
        if self.step > 0 and self.best.improved(values, self.step):  # the untrained model never counts
            self.export(self.out / "best")
        return loss

    # --- the end ----------------------------------------------------------------------------
    def finish(self) -> None:
        """The run's last metrics (every rank's peak memory under DDP) and the final model, logged."""
        ranks = distributed.gather({"peak_rss": peak_rss_bytes(), "digest": distributed.param_digest(self.model)}, self.world)
        if self.world.distributed:
            self.log.metrics({Metric.peak_rss_mb_rank(i): x["peak_rss"] / MIB for i, x in enumerate(ranks)}, self.steps)
            self.log.tags({Tag.param_digest(i): x["digest"] for i, x in enumerate(ranks)})
            self.log.tags({Tag.RANKS_IN_SYNC: str(len({x["digest"] for x in ranks}) == 1).lower()})
        cuda = self.world.device.type == "cuda"
        self.log.metrics({
            Metric.PEAK_RSS_MB: peak_rss_bytes() / MIB,
            Metric.RSS_AT_START_MB: self.rss_before_model / MIB,
            Metric.EXPECTED_STATE_BYTES: optim.expected_state_bytes(self.recipe.optimizer, self.model, **self.hp),
            **({Metric.CUDA_PEAK_ALLOCATED_MB: cuda_peak_allocated_bytes() / MIB} if cuda else {}),
            **({Metric.BEST_STEP: self.best.step} if self.best.step is not None else {}),  # its value: val_* at that step
        }, self.steps)
        if not self.world.is_main:
            return
        final = self.out / "final"
        if self.best.step is not None:  # the best evaluation's model is the final one
            shutil.rmtree(final, ignore_errors=True)
            shutil.copytree(self.out / "best", final)
        else:
            self.export(final)
        self.log.flush()
        if tracking.run_model_id(self.log.client, self.cfg.run_id) is None:  # a resume after the end: logged already
            tracking.log_model(self.log.client, self.cfg.run_id, final, step=self.steps)

    def export(self, folder: Path) -> None:
        """save_pretrained into a temporary folder renamed into place: a kill leaves the previous export whole."""
        tmp = folder.with_name(f".{folder.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self._dense_model().save_pretrained(tmp, safe_serialization=True)
        self.data.tokenizer().save_pretrained(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)

    def _dense_model(self) -> torch.nn.Module:
        """The model as its architecture defines it: reparameterized linears (Low-Rank, SLTrain, ...) merged
        back into dense weights, so the exported model loads anywhere."""
        if not any(hasattr(m, "dense_weight") for m in self.model.modules()):
            return self.model
        dense = build_model(self.cfg.model_name, vocab_size=self.data.vocab_size, seed=self.opts.seed, pretrained=False)
        dense = dense.to(DTYPES[self.opts.dtype])
        dense.load_state_dict(merged_state_dict(self.model))
        return dense
