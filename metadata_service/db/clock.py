"""The database's clock, read on this host: what every lease is timed by.

Replicas of the metadata service on several hosts share one PostgreSQL
database, and a lease written by one is judged by the others: "has it run
out?" compares the stored expiry with *their* "now". Were each host to use
its own clock, a host running behind would take over chunks whose holder is
still sending them (the same chunk sent twice, a settle lost), and one
running ahead would hand out leases that outlive a crash of their holder by
its skew. So every "now" a lease or a claim uses is the database's: one
clock for every replica (DESIGN.md §7).

Why an offset measured now and then rather than `clock_timestamp()` inside
every statement: a lease is also the claim's token, chosen before the write
that takes it (an ingest call writes its chunks already held under it), so
the caller needs the value in hand, and `Indexer.new_lease` runs on the
event loop, where no query may block. The offset (database minus host) is
measured off the loop, at start-up and then at most every
`REFRESH_SECONDS` by the indexer's passes, from the query whose round trip
was shortest, read at its midpoint: the error is at most half that round
trip (well under a millisecond on a LAN) against leases of seconds.

The host side counts with the monotonic clock (anchored once to the wall
clock): a step of the host's wall clock (an NTP step, an operator's `date`)
then changes nothing, and the drift between two refreshes is a few ppm.
SQLite lives on this host, so its clock is this host's wall clock; the
offset is then what it would be for a host clock that a test injects.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text

_LOGGER = logging.getLogger(__name__)

# Seconds between measurements of the offset (by the indexer's passes).
REFRESH_SECONDS = 60.0
# Round trips per measurement; the shortest one is read.
_SAMPLES = 3

HostClock = Callable[[], datetime]


def monotonic_utc() -> HostClock:
    """This host's UTC time counted by the monotonic clock from one reading
    of the wall clock: immune to steps of the latter."""
    wall, mono = datetime.now(UTC), time.monotonic()
    return lambda: wall + timedelta(seconds=time.monotonic() - mono)


def database_time(engine: Engine) -> Callable[[], datetime]:
    """Reads the database's own clock: PostgreSQL's `clock_timestamp()` (the
    time as the statement runs, not the transaction's start). SQLite has no
    clock of its own but this host's."""
    if engine.dialect.name == "sqlite":
        return lambda: datetime.now(UTC)

    def read() -> datetime:
        with engine.connect() as conn:
            value = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
        return _aware(value)

    return read


class DatabaseClock:
    """`now()`: the database's time, without a query (host clock + offset)."""

    def __init__(
        self,
        read_database: Callable[[], datetime],
        host_clock: HostClock | None = None,
        *,
        refresh_seconds: float = REFRESH_SECONDS,
    ) -> None:
        self._read_database = read_database
        self._host = host_clock or monotonic_utc()
        self._refresh_seconds = refresh_seconds
        self._offset: timedelta | None = None
        self._measured_at = 0.0  # time.monotonic() of the last measurement
        self._lock = threading.Lock()

    @classmethod
    def of(cls, engine: Engine, host_clock: HostClock | None = None) -> DatabaseClock:
        return cls(database_time(engine), host_clock)

    @property
    def offset(self) -> timedelta | None:
        """Database minus host, as last measured (None: not yet)."""
        return self._offset

    def now(self) -> datetime:
        """The database's time now. Never queries once measured; the first
        call measures (blocking) if start-up could not: a server measures off
        the loop before it serves (MetadataServer.start)."""
        offset = self._offset
        if offset is None:
            offset = self.refresh()
        return self._host() + offset

    def refresh(self) -> timedelta:
        """Measures the offset now (blocks on a query); returns it."""
        with self._lock:
            best: tuple[float, timedelta] | None = None
            for _ in range(_SAMPLES):
                before = self._host()
                started = time.monotonic()
                database = self._read_database()
                trip = time.monotonic() - started
                offset = database - (before + timedelta(seconds=trip / 2))
                if best is None or trip < best[0]:
                    best = (trip, offset)
            assert best is not None
            trip, offset = best
            previous, self._offset = self._offset, offset
            self._measured_at = time.monotonic()
        if previous is None or abs(offset - previous) > timedelta(seconds=1):
            _LOGGER.info(
                "database clock measured",
                extra={"offset_s": round(offset.total_seconds(), 6), "round_trip_ms": trip * 1000},
            )
        return offset

    def refresh_if_due(self) -> None:
        """Measures again when REFRESH_SECONDS passed since the last time
        (blocking: call it off the event loop). A failure keeps the offset
        last measured: clocks drift by ppm, and the database being down
        stops every claim anyway."""
        if self._offset is not None and (
            time.monotonic() - self._measured_at < self._refresh_seconds
        ):
            return
        try:
            self.refresh()
        except Exception as exc:
            if self._offset is None:
                raise
            _LOGGER.warning("database clock not measured again: %s", exc)


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
