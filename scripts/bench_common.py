"""What the benchmark scripts share: fixed, seeded corpora and timing."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable

WORDS = " ".join(
    (
        "the of and to in is for on with as by at from that this are be or it an was which",
        "storage vector index query chunk document metadata service embedding search model",
        "batch stream filter collection database write read pool worker process latency",
    )
).split(" ")


def sentences(count: int, min_words: int, max_words: int, seed: int) -> list[str]:
    """`count` texts of min..max words drawn from WORDS; the same every run."""
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words)))
        for _ in range(count)
    ]


def median_rate(run: Callable[[], object], items: int, repeat: int) -> float:
    """Items per second, median of `repeat` timed runs after one warm-up."""
    run()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return items / statistics.median(times)
