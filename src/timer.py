"""The wall-clock timer of every measurement in the project: interleaved medians.

A leaf module (standard library only), so that the deploy plan (src/deploy/tuning.py), the
benchmarks (src/bench) and a benchmark that must import only the core (src/bench/core_api.py)
share one timer.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

__all__ = ["time_interleaved"]


def time_interleaved(fns: Sequence[Callable[[], object]], reps: int = 20, warmup: int = 3,
                     min_time: float = 0.0) -> list[float]:
    """Median seconds per call of each fn, timed round-robin in one process, so machine noise hits
    them alike. Runs at least `reps` rounds and keeps going until `min_time` seconds have been
    spent per fn."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    while True:
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            samples[i].append(time.perf_counter() - t0)
        if len(samples[0]) >= reps and sum(samples[0]) >= min_time:
            break
    return [statistics.median(s) for s in samples]
