"""Timing rules shared by every section: warm-up excluded, median of the
repetitions, percentiles from raw samples."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence


def median_rate(run: Callable[[], object], items: int, repeat: int, warm_up: bool = True) -> float:
    """Items per second, median of `repeat` timed runs (after one untimed)."""
    if warm_up:
        run()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return items / statistics.median(times)


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 of 200 samples is the
    second-worst one, a value that was actually seen)."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]
