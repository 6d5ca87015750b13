"""Test helpers shared by the family's tests: tiny models, seeded and learnable data,
the training engine's step, and a save/load resume run. Measured state bytes:
memopt.memory.optimizer_state_bytes. The contract every registered method meets is
memopt.optim.optim_db."""
from __future__ import annotations

import io
from typing import Any, Callable, Hashable

import torch
from torch import nn


class Tiny(nn.Module):
    """Embedding -> attn linear -> mlp linear -> head; names match the target filter."""

    def __init__(self, vocab: int = 16, d: int = 8, hidden: int = 12, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, d)
        self.attn = nn.Linear(d, hidden, bias=False)
        self.mlp = nn.Linear(hidden, d)
        self.head = nn.Linear(d, vocab)

    def forward(self, x):
        return self.head(self.mlp(torch.tanh(self.attn(self.embed(x)))))


def batch(step: int, vocab: int = 16, n: int = 6, seq: int = 5):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randint(0, vocab, (n, seq), generator=g), torch.randint(0, vocab, (n, seq), generator=g)


def loss_of(model: nn.Module, step: int, vocab: int = 16) -> torch.Tensor:
    x, y = batch(step, vocab)
    out = model(x)
    logits = out.logits if hasattr(out, "logits") else out
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: range, vocab: int = 16) -> None:
    for s in steps:
        @torch.enable_grad()  # some reference optimizers call the closure under no_grad
        def closure(s=s):
            opt.zero_grad()
            loss = loss_of(model, s, vocab)
            loss.backward()
            return loss
        opt.step(closure)


def logits_of(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


def pattern_batch(step: int, vocab: int, rows: int = 4, seq: int = 16) -> torch.Tensor:
    """A learnable sequence: each row counts up by one (mod vocab) from a seeded random start, so every
    next token follows from the current one and a model can drive the loss towards 0."""
    start = torch.randint(0, vocab, (rows, 1), generator=torch.Generator().manual_seed(step))
    return (start + torch.arange(seq)) % vocab


def next_token_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    logits = logits_of(model(x))[:, :-1]
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))


def engine_step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    """One optimizer step as memopt.train takes it: backward outside `step`, a closure that only returns
    the loss, zero_grad after."""
    loss.backward()
    opt.step(lambda: loss.detach())
    opt.zero_grad(set_to_none=True)
    return loss.item()


def run_pattern(model: nn.Module, opt: torch.optim.Optimizer, steps: range, vocab: int,
                marker: Callable[[nn.Module, torch.optim.Optimizer], Hashable] | None = None) -> list[Any]:
    """engine_step on pattern_batch(step) for each step; returns marker(model, opt) after each step (or the losses)."""
    seen = []
    for s in steps:
        loss = engine_step(opt, next_token_loss(model, pattern_batch(s, vocab)))
        seen.append(loss if marker is None else marker(model, opt))
    return seen


def save_and_load(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """torch.save of model and optimizer state, read back with torch.load(weights_only=True)."""
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def resume_matches(make: Callable[[], tuple[nn.Module, torch.optim.Optimizer]], k: int, n: int, vocab: int = 16) -> bool:
    """Train k+n steps straight vs k steps, save, load into a fresh (model, opt), n more.
    True when every parameter is bitwise equal."""
    m1, o1 = make()
    train(m1, o1, range(k + n), vocab)
    m2, o2 = make()
    train(m2, o2, range(k), vocab)
    ck = save_and_load(m2, o2)
    m3, o3 = make()
    m3.load_state_dict(ck["model"])
    o3.load_state_dict(ck["optimizer"])
    train(m3, o3, range(k, k + n), vocab)
    a, b = m1.state_dict(), m3.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def tall_wide_run(make: Callable[..., torch.optim.Optimizer], proj_type: str, steps: int, gap: int, wd: float,
                  scale: float = 0.25, seed: int = 0, **kw) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
    """Tall (12x6) and wide (5x9) projected weights plus a plain vector, the same gradients every run;
    a gradient depends on the weights, so differences between optimizers compound. Returns the weights."""
    torch.manual_seed(seed)
    tall, wide, bias = nn.Parameter(torch.randn(12, 6)), nn.Parameter(torch.randn(5, 9)), nn.Parameter(torch.randn(7))
    groups = [{"params": [bias]},
              {"params": [tall, wide], "rank": 3, "update_proj_gap": gap, "scale": scale, "proj_type": proj_type}]
    opt = make(groups, lr=0.01, weight_decay=wd, **kw)
    gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        for p in (tall, wide, bias):
            p.grad = torch.randn(p.shape, generator=gen) + 0.1 * p.detach()
        opt.step()
    return [p.detach().clone() for p in (tall, wide, bias)], opt
