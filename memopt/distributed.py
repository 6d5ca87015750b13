"""Data-parallel training through torchrun: the launch command, the process group, the DDP wrapper.

The train task runs `python -m memopt.train CONFIG.json` as it is when one
process trains, and through `python -m torch.distributed.run` (torchrun) when
`nproc_per_node × nnodes > 1`. torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; the
process group is gloo on CPU and NCCL on CUDA (one GPU per process, by local rank).

What each rank does:
- every rank builds the same model (same seed), the same optimizer, and wraps the
  model in DistributedDataParallel: gradients are averaged across ranks in
  backward, so every rank steps with the same gradient. GaLore's SVD projector
  and BlockLLM's selection are computed from that averaged gradient and come out
  the same everywhere (their random choices use seeded generators, equal on every rank);
- each rank takes its own slice of every global batch;
- only rank 0 logs to MLflow, evaluates, writes checkpoints and the final model;
  each rank's peak RSS is gathered to rank 0 at the end (`peak_rss_mb_rank{r}`),
  and so is a digest of each rank's parameters (`memopt.param_digest.rank{r}` tags),
  a cheap proof that the ranks did not drift apart.

BlockLLM switches `requires_grad` of whole tensors on and off between steps. DDP
registers its gradient hooks for the parameters that require a gradient when it
is built, and by default expects each of them to get a gradient in every
backward; so the wrapper is built after the optimizer (which freezes what it
never trains), with `find_unused_parameters=True`: a tensor that is switched off
gets no gradient on any rank, DDP marks it ready without touching its `.grad`
(it stays None, as BlockLLM expects), and one switched back on is reduced again.

FSDP/ZeRO is not offered: they shard each weight into 1-D pieces, and GaLore needs
whole 2-D gradients for its SVD (the GaLore authors' issue 2).
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

DEFAULT_PORT = 29500


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup() -> World:
    """Join the process group torchrun describes in the environment (or none when run as one process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda and world_size > 1 else torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    return World(rank, world_size, local_rank, device)


def teardown(world: World) -> None:
    """Leave the process group. The barrier first: destroying a gloo group while its worker thread still
    frees the last all_gather_object's tensors can deadlock on the GIL (seen once in torch 2.13: the main
    thread joins the gloo thread, which waits for the GIL to decref a tensor)."""
    if world.distributed and dist.is_initialized():
        with contextlib.suppress(Exception):  # a peer that already failed: nothing to wait for
            dist.barrier()
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, world: World) -> torch.nn.Module:
    """The model as the forward pass should call it: DDP when there are several ranks, else itself."""
    if not world.distributed:
        return model
    device_ids = [world.device.index] if world.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)


def no_sync(wrapped: torch.nn.Module, skip: bool) -> contextlib.AbstractContextManager:
    """Skip DDP's gradient all-reduce on every micro-batch of an accumulated step but the last."""
    return wrapped.no_sync() if skip and isinstance(wrapped, DistributedDataParallel) else contextlib.nullcontext()


def mean(value: torch.Tensor, world: World) -> torch.Tensor:
    """The mean of a scalar over the ranks (gloo has no AVG, so SUM / world)."""
    if world.distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= world.world_size
    return value


def gather(obj: Any, world: World) -> list[Any]:
    """Every rank's `obj`, in rank order (on every rank)."""
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.world_size
    dist.all_gather_object(out, obj)
    return out


def param_digest(model: torch.nn.Module) -> str:
    """A SHA-256 of every parameter's bytes, in name order: equal on two ranks iff their weights are."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def launch_command(config_path: str, nproc_per_node: int = 1, nnodes: int = 1, rdzv_endpoint: str = "",
                   rdzv_id: str = "memopt") -> list[str]:
    """The command that runs the training process: plain Python, or torchrun when several processes train."""
    target = ["-m", "memopt.train", str(config_path)]
    if nproc_per_node * nnodes <= 1:
        return [sys.executable, *target]
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc_per_node)]
    if nnodes == 1 and not rdzv_endpoint:
        run.append("--standalone")  # a free local port for the rendezvous: several trainings may share a machine
    else:
        run += ["--nnodes", str(nnodes), "--rdzv_backend", "c10d", "--rdzv_endpoint", rdzv_endpoint, "--rdzv_id", rdzv_id]
    return [*run, *target]


def check_launch_options(nproc_per_node: int, nnodes: int, rdzv_endpoint: str) -> None:
    """Raise ValueError('--NAME: got VALUE; ...') for the first bad option."""
    for name, value in (("nproc_per_node", nproc_per_node), ("nnodes", nnodes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"--{name}: got {value!r}; must be an integer >= 1")
    if torch.cuda.is_available() and nproc_per_node > torch.cuda.device_count():
        raise ValueError(
            f"--nproc_per_node: got {nproc_per_node}; this machine has {torch.cuda.device_count()} CUDA device(s) "
            "(one process per GPU)"
        )
    if nnodes > 1 and not rdzv_endpoint:
        raise ValueError(f"--rdzv_endpoint: empty with --nnodes {nnodes}; give HOST:PORT of the first node, e.g. node0:{DEFAULT_PORT}")
    if rdzv_endpoint:
        host, sep, port = rdzv_endpoint.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--rdzv_endpoint: got {rdzv_endpoint!r}; must be HOST:PORT, e.g. node0:{DEFAULT_PORT}")
