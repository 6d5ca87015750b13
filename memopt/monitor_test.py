"""The process's peak memory is its own: not the parent's it was started from, not lost by a reset."""
from __future__ import annotations

import subprocess
import sys

import numpy as np

from memopt.monitor import peak_rss_bytes, reset_peak_rss, rss_bytes, rss_high_water_bytes

MIB = 1024 * 1024


def test_a_child_process_peak_is_not_its_parents():
    held = np.ones(300 * MIB // 8)  # the parent holds 300 MiB more than the child ever will
    child = "from memopt.monitor import peak_rss_bytes; print(peak_rss_bytes())"
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True).stdout
    assert int(out) < rss_bytes() - 200 * MIB, "getrusage's ru_maxrss would report the parent's peak here"
    del held


def test_a_reset_starts_the_high_water_mark_afresh_and_keeps_the_process_peak():
    spike = np.ones(100 * MIB // 8)
    spike[:] = 2.0
    before = peak_rss_bytes()
    del spike
    assert reset_peak_rss()
    assert rss_high_water_bytes() < before - 50 * MIB
    assert peak_rss_bytes() >= before
