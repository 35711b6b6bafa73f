"""Wall-clock timing that the benchmark, the sweep and the demo share: synchronised on CUDA,
rounds interleaved across the things compared (drift of a shared machine hits them alike), the
median of the timed rounds after untimed warm-up ones."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from ..errors import UserError


def synchronize(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], device: str = "cpu") -> float:
    """Seconds one call of fn takes, with the device's queued work finished before and after."""
    synchronize(device)
    t = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t


def interleaved_times(calls: dict, rounds: int, warmup: int = 1, device: str = "cpu") -> dict[str, list[float]]:
    """Seconds of every timed call of each entry; every round calls each entry once, in turn."""
    if rounds < 1:
        raise UserError(f"rounds={rounds}: expected at least 1 timed round")
    times: dict = {name: [] for name in calls}
    for r in range(warmup + rounds):
        for name, fn in calls.items():
            t = time_call(fn, device)
            if r >= warmup:
                times[name].append(t)
    return times


def interleaved_medians(calls: dict, rounds: int, warmup: int = 1, device: str = "cpu") -> dict[str, float]:
    """Median seconds per call of each entry (see interleaved_times)."""
    return {name: statistics.median(t) for name, t in interleaved_times(calls, rounds, warmup, device).items()}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linearly interpolated between the nearest ranks (numpy's)."""
    import numpy as np

    return float(np.percentile(values, q))
