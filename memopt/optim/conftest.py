"""Pytest setup for the optimizer tests.

One intra-op thread: the test tensors are tiny, and on the shared 2-core machine
torch's default (one OpenMP thread per core) spends its time in barrier waits
whenever another process holds a core -- a llama-micro step went from 16 ms to
1.2 s under load. Results within a process stay deterministic either way, and
every bit-exact comparison here is within one process.
"""
import torch

torch.set_num_threads(1)
