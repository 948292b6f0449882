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


def median_pair(pairs: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """The (numerator, denominator) pair whose ratio is the median ratio.

    Each pair is measured back to back, so both sides see the same moment of
    a shared machine: its speed drifts by 10-30% over minutes, which would
    move a ratio of separately taken medians as much."""
    ordered = sorted(pairs, key=lambda p: p[0] / p[1] if p[1] else 0.0)
    return ordered[len(ordered) // 2]


def geometric_mean_pair(pairs: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """(numerator, denominator): the geometric means of each side, so their
    ratio is the geometric mean of the pairs' ratios. Uses every pair, where
    `median_pair` keeps one: the finer estimate when the effect sought (a
    few percent) is smaller than the pairs' spread."""
    if not pairs:
        return 0.0, 0.0
    return (
        statistics.geometric_mean(p[0] for p in pairs),
        statistics.geometric_mean(p[1] for p in pairs),
    )
