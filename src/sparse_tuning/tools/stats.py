"""Uncertainty of accuracies: how far a measured top-1 can be trusted, and whether two differ.

Pure arithmetic (no torch), so reports and benchmarks share one definition of "a tie".
"""
from __future__ import annotations

import math
import statistics
from typing import Sequence

from ..errors import UserError

Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion, as percentages (0-100).

    Wilson rather than the normal approximation: it stays inside [0, 100] and is accurate for
    accuracies near 0 or 100 and for small test sets.
    """
    if n <= 0:
        raise UserError("n must be > 0")
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # The interval holds p; at p = 0 or 1 its bound is p exactly, which float error can overshoot.
    return 100 * max(0.0, min(p, centre - half)), 100 * min(1.0, max(p, centre + half))


def accuracy_interval(top1: float, images: int) -> list[float]:
    """The 95% Wilson interval of a top-1 (percent) measured on `images` images, as [low, high]."""
    return list(wilson_interval(round(top1 * images / 100), images))


def proportions_differ(top1_a: float, top1_b: float, n_a: int, n_b: int, z: float = Z95) -> bool:
    """Whether two accuracies (percent) on independent test sets of n_a and n_b images differ at
    95% (two-proportion z-test, pooled). False means the difference is inside the noise: a tie."""
    a, b = top1_a / 100, top1_b / 100
    pooled = (a * n_a + b * n_b) / (n_a + n_b)
    se = math.sqrt(max(pooled * (1 - pooled) * (1 / n_a + 1 / n_b), 0.0))
    if se == 0:
        return a != b
    return abs(a - b) / se > z


# Two-sided 95% quantiles of Student's t for 1..10 degrees of freedom; beyond, 10's (conservative).
T95 = (12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851, 2.364624252,
       2.306004135, 2.262157163, 2.228138852)


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, bool]:
    """(mean of a_i - b_i, its standard deviation, whether it differs from 0 at 95%): a paired
    t-test over seeds, for two methods trained on the same data subsets seed by seed.

    False (a tie) unless the mean gap exceeds t_{0.975, n-1} standard errors; with 3 seeds that
    is 4.3 standard errors, so only a gap that every seed shows alike is called.
    """
    if len(a) != len(b) or len(a) < 2:
        raise UserError("need the same seeds, at least two, for both methods")
    d = [x - y for x, y in zip(a, b)]
    mean, sd = statistics.mean(d), statistics.stdev(d)
    se = sd / math.sqrt(len(d))
    t = T95[min(len(d) - 1, len(T95)) - 1]
    return mean, sd, (abs(mean) > t * se) if se > 0 else mean != 0
