"""Uncertainty of accuracies: how far a measured top-1 can be trusted, and whether two differ.

Pure arithmetic (no torch), so reports and benchmarks share one definition of "a tie".
"""
from __future__ import annotations

import math
import statistics
from typing import Sequence

Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion, as percentages (0-100).

    Wilson rather than the normal approximation: it stays inside [0, 100] and is accurate for
    accuracies near 0 or 100 and for small test sets.
    """
    if n <= 0:
        raise ValueError("n must be > 0")
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return 100 * max(0.0, centre - half), 100 * min(1.0, centre + half)


def proportions_differ(top1_a: float, top1_b: float, n_a: int, n_b: int, z: float = Z95) -> bool:
    """Whether two accuracies (percent) on independent test sets of n_a and n_b images differ at
    95% (two-proportion z-test, pooled). False means the difference is inside the noise: a tie."""
    a, b = top1_a / 100, top1_b / 100
    pooled = (a * n_a + b * n_b) / (n_a + n_b)
    se = math.sqrt(max(pooled * (1 - pooled) * (1 / n_a + 1 / n_b), 0.0))
    if se == 0:
        return a != b
    return abs(a - b) / se > z


def seeds_differ(a: Sequence[float], b: Sequence[float], k: float = 2.0) -> bool:
    """Whether two methods' per-seed accuracies differ by more than k standard errors of the
    difference of their means (sd_a^2 / n_a + sd_b^2 / n_b). With 3 seeds this is a rough rule,
    not a test at a stated level: it calls a tie unless the gap clearly exceeds the seed noise."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("need at least two seeds per method")
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    gap = abs(statistics.mean(a) - statistics.mean(b))
    return gap > k * se if se > 0 else gap > 0
