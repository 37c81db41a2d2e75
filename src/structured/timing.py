"""Interleaved wall-clock timing: candidates run round-robin in one process, so machine noise hits
them alike. Used by :func:`src.structured.ops.plan_recompose` and by the benchmarks (src/bench)."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

__all__ = ["time_interleaved"]


def time_interleaved(fns: Sequence[Callable[[], object]], reps: int = 20, warmup: int = 3,
                     min_time: float = 0.0) -> list[float]:
    """Median seconds per call of each fn, timed round-robin. Runs at least `reps` rounds and
    keeps going until `min_time` seconds have been spent per fn."""
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
