"""Statistics over seeds, and the rule that says whether two methods differ. Pure: numbers in, numbers out.

A method's result is the spread of its seed runs' values: mean ± sample standard deviation (n − 1) and
min–max. The rule for "is the gap between two methods a result": the gap between their means must be
larger than the sum of their standard deviations (their mean ± std intervals do not overlap). A gap
inside that is marked "not significant"; with fewer than two seeds on either side there is no spread to
compare with, and nothing is claimed ("one seed").
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable

SIGNIFICANCE_RULE = ("a gap between two methods counts only when it is larger than the sum of their standard "
                     "deviations over seeds (the mean ± std intervals do not overlap); with one seed nothing is claimed")


@dataclass(frozen=True)
class Spread:
    """Values over seeds: n, mean, sample standard deviation (0 for one value), min and max."""

    n: int
    mean: float
    std: float
    min: float
    max: float

    def text(self, spec: str = ".4f") -> str:
        """`1.2345 ± 0.0100 (1.2200–1.2400)`, or the value alone for one seed."""
        if self.n == 1:
            return format(self.mean, spec)
        return f"{self.mean:{spec}} ± {self.std:{spec}} ({self.min:{spec}}–{self.max:{spec}})"


def spread(values: Iterable[float]) -> Spread:
    """The spread of finite `values`; ValueError when there are none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        raise ValueError("no finite value to summarize")
    std = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return Spread(len(finite), statistics.fmean(finite), std, min(finite), max(finite))


def significant(a: Spread, b: Spread) -> bool | None:
    """Whether the gap between a's and b's means is a result (SIGNIFICANCE_RULE); None with one seed on a side."""
    if a.n < 2 or b.n < 2:
        return None
    return abs(a.mean - b.mean) > a.std + b.std


def verdict(a: Spread, b: Spread) -> str:
    """Words for `significant(a, b)`: "significant", "not significant" or "one seed"."""
    result = significant(a, b)
    return "one seed" if result is None else "significant" if result else "not significant"
