"""The vector service's metrics (askmojo.common.metrics has the endpoint and
the RPC metrics). One process records them all (the embedding workers are
the pool's, measured from here), so the batcher's queue is read at scrape
time instead of being written at every arrival.

Label values are bounded: lanes ("interactive", "bulk") and store
operations; never collection names or ids.
"""

from __future__ import annotations

import functools
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ParamSpec, Protocol, TypeVar

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from askmojo.common import metrics

P = ParamSpec("P")
R = TypeVar("R")

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
_BATCH_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

BATCH_TEXTS = metrics.histogram(
    "askmojo_embedding_batch_texts",
    "Texts per batch the embedding workers ran, by lane.",
    ("lane",),
    buckets=_BATCH_BUCKETS,
)
BATCH_PADDED_TOKENS = metrics.histogram(
    "askmojo_embedding_batch_padded_tokens",
    "Tokens a batch cost the model: its texts times its longest text, by lane.",
    ("lane",),
    buckets=_TOKEN_BUCKETS,
)
BATCH_DURATION = metrics.histogram(
    "askmojo_embedding_batch_duration_seconds",
    "Time a batch took in the pool (worker compute and the hand-over), by lane.",
    ("lane",),
    buckets=_BATCH_SECONDS,
)
TEXTS = metrics.counter(
    "askmojo_embedding_texts",
    "Texts embedded, by lane (rate(): texts per second).",
    ("lane",),
)
TOKENS = metrics.counter(
    "askmojo_embedding_tokens",
    "Tokens the model read (each text's, without padding), by lane.",
    ("lane",),
)
WORKER_BUSY = metrics.counter(
    "askmojo_embedding_worker_busy_seconds",
    "Seconds embedding workers spent on batches, summed over workers, by lane "
    "(rate() over askmojo_embedding_workers: how busy they are).",
    ("lane",),
)
POOL_RESTARTS = metrics.counter(
    "askmojo_embedding_pool_restarts",
    "Embedding pool rebuilds (a worker died or hung; every worker is replaced), by reason: "
    "BrokenProcessPool, TimeoutError (a batch ran past BATCH_TIMEOUT), worker_exited (idle).",
    ("reason",),
)
CHROMA_DURATION = metrics.histogram(
    "askmojo_chroma_call_duration_seconds",
    "Time of a vector store (Chroma) operation, failures included, by operation.",
    ("operation",),
    buckets=metrics.LATENCY_BUCKETS,
)


# --- recording hooks (cheap no-ops while metrics are off) -----------------------------


class _LaneSeries:
    """One lane's children of the batch families, looked up once: a batch
    of single-text calls comes every few milliseconds, and `.labels()` takes
    a lock and a dictionary lookup per family."""

    __slots__ = ("busy", "duration", "padded_tokens", "texts", "texts_total", "tokens")

    def __init__(self, lane: str) -> None:
        self.texts = BATCH_TEXTS.labels(lane)
        self.padded_tokens = BATCH_PADDED_TOKENS.labels(lane)
        self.duration = BATCH_DURATION.labels(lane)
        self.texts_total = TEXTS.labels(lane)
        self.tokens = TOKENS.labels(lane)
        self.busy = WORKER_BUSY.labels(lane)


_lanes: dict[str, _LaneSeries] = {}


def _lane(lane: str) -> _LaneSeries:
    series = _lanes.get(lane)
    if series is None:
        # Lanes are the batcher's two; a race here builds the same children twice.
        series = _lanes[lane] = _LaneSeries(lane)
    return series


def batch_done(lane: str, token_counts: Sequence[int], seconds: float) -> None:
    if not metrics.enabled():
        return
    series = _lane(lane)
    texts = len(token_counts)
    series.texts.observe(texts)
    series.padded_tokens.observe(texts * max(token_counts, default=0))
    series.duration.observe(seconds)
    series.texts_total.inc(texts)
    series.tokens.inc(sum(token_counts))
    series.busy.inc(seconds)


def batch_failed(lane: str, seconds: float) -> None:
    """A batch that did not come back still kept its worker busy."""
    if metrics.enabled():
        _lane(lane).busy.inc(seconds)


def pool_restarting(reason: str) -> None:
    if metrics.enabled():
        # Exception class names (BrokenProcessPool, TimeoutError) or "idle":
        # a handful of values.
        POOL_RESTARTS.labels(reason).inc()


LANES = ("interactive", "bulk")
POOL_RESTART_REASONS = ("BrokenProcessPool", "TimeoutError", "worker_exited")
STORE_OPERATIONS = (
    "heartbeat",
    "ensure_collection",
    "drop_collection",
    "get_collection",
    "upsert",
    "query",
    "get",
    "delete",
    "count",
    "list_ids",
)


def _initialize() -> None:
    """Every series exported from the start (at 0), so rates and dashboards
    see the first event too."""
    for lane in LANES:
        for family in (
            BATCH_TEXTS,
            BATCH_PADDED_TOKENS,
            BATCH_DURATION,
            TEXTS,
            TOKENS,
            WORKER_BUSY,
        ):
            family.labels(lane)
    for reason in POOL_RESTART_REASONS:
        POOL_RESTARTS.labels(reason)
    for operation in STORE_OPERATIONS:
        CHROMA_DURATION.labels(operation)


def timed(operation: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Times a store method as `operation` while metrics are on."""
    if operation not in STORE_OPERATIONS:
        raise ValueError(f"unknown store operation {operation!r}")

    def decorate(method: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(method)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if not metrics.enabled():
                return method(*args, **kwargs)
            child = CHROMA_DURATION.labels(operation)
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                child.observe(time.perf_counter() - started)

        return wrapper

    return decorate


# --- the batcher, read at scrape time -------------------------------------------------


class QueueState(Protocol):
    def queue_state(self) -> BatcherState: ...


class BatcherState:
    __slots__ = ("capacity", "in_flight", "queued", "workers")

    def __init__(
        self,
        queued: dict[str, int],
        in_flight: dict[str, int],
        capacity: int,
        workers: dict[str, int],
    ) -> None:
        self.queued = queued
        self.in_flight = in_flight
        self.capacity = capacity
        self.workers = workers


class _Batchers:
    """A collector over the live batchers of this process (one in a service;
    tests may build several)."""

    def __init__(self) -> None:
        self._batchers: weakref.WeakSet[Any] = weakref.WeakSet()
        self.registered = False

    def add(self, batcher: QueueState) -> None:
        self._batchers.add(batcher)

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        states = [b.queue_state() for b in list(self._batchers)]
        if not states:
            return
        queued = GaugeMetricFamily(
            "askmojo_embedding_queued_texts",
            "Texts waiting in the batcher for a batch, by lane (texts of calls cancelled "
            "meanwhile count until a batch skips them).",
            labels=["lane"],
        )
        in_flight = GaugeMetricFamily(
            "askmojo_embedding_batches_in_flight",
            "Batches running in the pool now, by lane.",
            labels=["lane"],
        )
        workers = GaugeMetricFamily(
            "askmojo_embedding_workers",
            "Embedding worker processes, by kind (express: kept for interactive batches).",
            labels=["kind"],
        )
        for lane in sorted({lane for s in states for lane in s.queued}):
            queued.add_metric([lane], float(sum(s.queued.get(lane, 0) for s in states)))
            in_flight.add_metric([lane], float(sum(s.in_flight.get(lane, 0) for s in states)))
        for kind in sorted({kind for s in states for kind in s.workers}):
            workers.add_metric([kind], float(sum(s.workers.get(kind, 0) for s in states)))
        yield queued
        yield in_flight
        yield workers
        yield GaugeMetricFamily(
            "askmojo_embedding_queue_capacity_texts",
            "Texts the batcher's queue holds at most (MAX_QUEUED_TEXTS).",
            value=float(sum(s.capacity for s in states)),
        )


_BATCHERS = _Batchers()
_lock = threading.Lock()


def watch_batcher(batcher: QueueState) -> None:
    """Reports `batcher`'s queue at each scrape while it lives."""
    with _lock:
        if not _BATCHERS.registered:
            REGISTRY.register(_BATCHERS)
            _BATCHERS.registered = True
            _initialize()
        _BATCHERS.add(batcher)
