"""The metadata service's metrics (askmojo.common.metrics has the endpoint
and the RPC metrics).

The service may run as several forked workers recording into one directory
(multiprocess mode), so every family here either has labels or is built on
first use (`Lazy`), and gauges say how the workers' values combine. The
outbox backlog is no per-worker value at all: `OutboxBacklog` asks the
database at scrape time, in the process serving the scrape (the supervisor
with several workers), at most every BACKLOG_MAX_AGE_S — one truthful
value, one cheap query, however many workers and scrapers there are.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from sqlalchemy import Engine, create_engine, event, func, select, text
from sqlalchemy.pool import NullPool

from askmojo.common import metrics
from metadata_service.config import MetadataSettings
from metadata_service.db.models import ChunkRow, VectorDeletionRow
from metadata_service.domain import IndexState

_LOGGER = logging.getLogger(__name__)

# The backlog is asked for at most this often, however often it is scraped.
BACKLOG_MAX_AGE_S = 5.0
# The partial index ix_chunks_outbox holds only unfinished chunks; SQLite
# uses a partial index only for this exact literal predicate (no parameter).
_IN_OUTBOX = text("chunks.state != 'INDEXED'")
# Held while a scrape queries the database, and across every fork of this
# process. The supervisor serves scrapes on the endpoint's thread while it
# forks workers (at start and to replace one that died): a fork in the
# middle of a query would hand the worker the database driver's internal
# locks held by a thread that does not exist in it (SQLite's allocator
# mutex among them), and its first connection would hang for ever.
_ASKING = threading.Lock()
os.register_at_fork(
    before=_ASKING.acquire, after_in_parent=_ASKING.release, after_in_child=_ASKING.release
)

POOL_CONNECTIONS = metrics.gauge(
    "askmojo_db_pool_connections",
    "Database connections of the SQLAlchemy pools (all workers): checked_out = in use, "
    "overflow = open beyond POOL_SIZE.",
    ("state",),
    mode="livesum",
)
SQLITE_WRITER_WAIT = metrics.histogram(
    "askmojo_sqlite_writer_wait_seconds",
    "How long a SQLite write waited for its turn: wait=thread behind writes of the same "
    "worker (a unit of work another thread wrote meanwhile waits until it is written), "
    "wait=process for the writer lock file held by another worker.",
    ("wait",),
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
SQLITE_GROUP_COMMIT = metrics.Lazy(
    lambda: metrics.histogram(
        "askmojo_sqlite_group_commit_units",
        "Units of work (writes) carried by one SQLite write transaction (group commit).",
        buckets=(1, 2, 3, 4, 6, 8, 12, 16),
    )
)
RECONCILE_REPAIRS = metrics.counter(
    "askmojo_reconcile_repairs",
    "What Reconcile (not dry-run) repaired, by kind: orphan vectors deleted, stale and "
    "missing ones re-queued, unfinished chunks resumed.",
    ("kind",),
)


REPAIR_KINDS = ("orphan", "stale", "missing", "resumed")


def watch_pool(engine: Engine) -> None:
    """Keeps the pool gauges at each checkout and checkin of `engine`, and
    exports every series of this module from the start (at 0). Called as a
    worker builds its engine, when metrics are on (so after multiprocess
    mode is)."""
    pool = engine.pool

    def changed(*_: Any) -> None:
        pool_changed(pool)

    event.listen(engine, "checkout", changed)
    event.listen(engine, "checkin", changed)
    pool_changed(pool)
    for wait in ("thread", "process"):
        SQLITE_WRITER_WAIT.labels(wait)
    if engine.dialect.name == "sqlite":
        SQLITE_GROUP_COMMIT()
    for kind in REPAIR_KINDS:
        RECONCILE_REPAIRS.labels(kind)


# --- recording hooks (cheap no-ops while metrics are off) -----------------------------


def pool_changed(pool: Any) -> None:
    """After a connection checkout or checkin: the pool's own counts, so the
    gauges cannot drift whatever events were missed."""
    if not metrics.enabled():
        return
    checkedout = getattr(pool, "checkedout", None)
    overflow = getattr(pool, "overflow", None)
    if callable(checkedout):
        POOL_CONNECTIONS.labels("checked_out").set(checkedout())
    if callable(overflow):
        # QueuePool counts negative while connections are still uncreated.
        POOL_CONNECTIONS.labels("overflow").set(max(0, overflow()))


def writer_waited(wait: str, seconds: float) -> None:
    if metrics.enabled():
        SQLITE_WRITER_WAIT.labels(wait).observe(seconds)


def group_committed(units: int) -> None:
    if metrics.enabled():
        SQLITE_GROUP_COMMIT().observe(units)


def reconciled(*, orphan: int, stale: int, missing: int, resumed: int) -> None:
    if metrics.enabled():
        for kind, count in zip(REPAIR_KINDS, (orphan, stale, missing, resumed), strict=True):
            RECONCILE_REPAIRS.labels(kind).inc(count)


# --- the outbox backlog, at scrape time ------------------------------------------------


class OutboxBacklog:
    """A collector: chunks waiting to be indexed by state, vector deletions
    waiting, and the age of the PENDING chunk first in the indexing queue
    (claims take the lowest ids first; a re-queued chunk counts from when it
    was re-queued). Queries through the partial outbox index, so the cost
    follows the backlog, not the table; a connection only while asking
    (NullPool: nothing held across the supervisor's forks)."""

    def __init__(self, settings: MetadataSettings, max_age: float = BACKLOG_MAX_AGE_S) -> None:
        self._url = settings.database_url
        self._timeout = settings.sqlite_timeout
        self._max_age = max_age
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._cached: list[Metric] = []
        self._asked = -float("inf")
        self._warned = False

    def describe(self) -> list[Metric]:
        # Not collected at registration (that would query the database).
        return []

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if time.monotonic() - self._asked >= self._max_age:
                self._asked = time.monotonic()
                try:
                    self._cached = self._ask()
                    self._warned = False
                except Exception as exc:  # a scrape must not fail: the series go missing
                    self._cached = []
                    if not self._warned:
                        self._warned = True
                        _LOGGER.warning("outbox backlog not measured: %s", type(exc).__name__)
            yield from self._cached

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None

    def _connect(self) -> Engine:
        if self._engine is None:
            args: dict[str, Any] = {"poolclass": NullPool, "hide_parameters": True}
            if self._url.startswith("sqlite"):
                args["connect_args"] = {"timeout": self._timeout}
            self._engine = create_engine(self._url, **args)
        return self._engine

    def _ask(self) -> list[Metric]:
        with _ASKING, self._connect().connect() as conn:
            by_state = dict(
                conn.execute(
                    select(ChunkRow.state, func.count()).where(_IN_OUTBOX).group_by(ChunkRow.state)
                ).all()
            )
            oldest = conn.execute(
                select(ChunkRow.updated_at)
                .where(_IN_OUTBOX, ChunkRow.state == IndexState.PENDING)
                .order_by(ChunkRow.id)
                .limit(1)
            ).scalar()
            deletions = conn.execute(select(func.count()).select_from(VectorDeletionRow)).scalar()
        chunks = GaugeMetricFamily(
            "askmojo_outbox_chunks",
            "Chunks not indexed yet, by state (PENDING: waiting or being sent; FAILED: "
            "refused by the vector service until re-queued).",
            labels=["state"],
        )
        for state in (IndexState.PENDING, IndexState.FAILED):
            chunks.add_metric([state.value], float(by_state.get(state, 0)))
        waiting = GaugeMetricFamily(
            "askmojo_outbox_deletions",
            "Recorded vector deletions not yet carried out in the vector service.",
            value=float(deletions or 0),
        )
        age = 0.0
        if isinstance(oldest, datetime):
            stamp = oldest if oldest.tzinfo is not None else oldest.replace(tzinfo=UTC)
            age = max(0.0, (datetime.now(UTC) - stamp).total_seconds())
        oldest_age = GaugeMetricFamily(
            "askmojo_outbox_oldest_pending_age_seconds",
            "Age of the PENDING chunk first in the indexing queue (0: none waits).",
            value=age,
        )
        return [chunks, waiting, oldest_age]
