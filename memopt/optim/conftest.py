"""Pytest setup for the optimizer tests.

One intra-op thread: the test tensors are tiny, and on the shared 2-core machine
torch's default (one OpenMP thread per core) spends its time in barrier waits
whenever another process holds a core -- a llama-micro step went from 16 ms to
1.2 s under load. Results within a process stay deterministic either way, and
every bit-exact comparison here is within one process.

BAdam runs gc.collect() at every block switch: about a second each in a process
that holds torch and transformers, most of a BAdam test's time. It frees nothing a
test reads, so BAdam's module gets a `gc` whose collect does nothing.
"""
import types

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def no_collection_at_badam_switches(monkeypatch):
    import badam.block_optim  # imports transformers, as most of these tests' models do anyway

    monkeypatch.setattr(badam.block_optim, "gc", types.SimpleNamespace(collect=lambda *args: 0))
