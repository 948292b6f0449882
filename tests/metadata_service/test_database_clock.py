"""Leases are timed by the database's clock, not each host's (issue #13,
DESIGN.md §7): metadata replicas whose hosts disagree about the time, sharing
one PostgreSQL database, neither take over each other's live leases nor
leave a run-out one unclaimed.

The host clocks are fakes (one an hour ahead, one an hour behind): the
host's clock is outside the unit. Everything else is real: PostgreSQL at
POSTGRES_TEST_URL (skipped, with the reason, when it is unreachable), the
service's Database, Outbox and Indexer as a replica builds them. With each
host's own clock (the code before this test), the replica behind hands out
leases the one ahead judges run out two hours early (a live lease stolen),
and the one ahead hands out leases the one behind waits two hours for."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text

from metadata_service.catalog import Catalog
from metadata_service.config import MetadataSettings
from metadata_service.db.clock import DatabaseClock
from metadata_service.db.engine import Database
from metadata_service.db.models import ChunkRow, VectorDeletionRow, utcnow
from metadata_service.domain import CollectionSpec, DocumentInput
from metadata_service.indexing import Indexer
from metadata_service.outbox import Outbox
from metadata_service.server import create_server, prepare_database
from tests.conftest import RunningServer, metadata_settings, postgres_database
from tests.waiting import wait_until

pytestmark = pytest.mark.postgres

SKEW = timedelta(hours=1)
LEASE_SECONDS = 1.0
# How far a replica's "now" may stray from the database's: half a local
# round trip in principle; generous for a loaded test machine.
TOLERANCE = timedelta(milliseconds=250)


def ahead() -> datetime:
    return utcnow() + SKEW


def behind() -> datetime:
    return utcnow() - SKEW


class NoVectorService:
    """The indexers here only lease work; nothing is sent."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the vector service is not used here ({name})")


class Replica:
    """What one metadata replica builds on its host: the database (with the
    host's clock), the outbox and the indexer handing out leases."""

    def __init__(self, settings: MetadataSettings, host_clock: Any) -> None:
        self.db = Database.from_settings(settings, host_clock=host_clock)
        self.outbox = Outbox(self.db)
        self._executor = ThreadPoolExecutor(1)
        self.indexer = Indexer(self.db, NoVectorService(), self._executor, settings)  # type: ignore[arg-type]

    def claim_chunks(self) -> tuple[datetime, int]:
        lease = self.indexer.new_lease()
        return lease, self.outbox.claim_chunks(lease, 1000)

    def claim_deletions(self) -> tuple[datetime, int]:
        lease = self.indexer.new_lease()
        return lease, len(self.outbox.claim_deletions(lease, 1000))

    def close(self) -> None:
        self._executor.shutdown()
        self.db.dispose()


@pytest.fixture
def pg_settings(tmp_path: Path) -> Iterator[MetadataSettings]:
    with postgres_database() as url:
        settings = metadata_settings(
            tmp_path / "unused.db", database_url=url, index_lease_seconds=LEASE_SECONDS
        )
        prepare_database(settings)
        yield settings


@pytest.fixture
def replicas(pg_settings: MetadataSettings) -> Iterator[tuple[Replica, Replica]]:
    early, late = Replica(pg_settings, ahead), Replica(pg_settings, behind)
    try:
        yield early, late
    finally:
        early.close()
        late.close()


def database_now(settings: MetadataSettings) -> datetime:
    """PostgreSQL's clock, read by the test itself."""
    engine = create_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            value = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
    finally:
        engine.dispose()
    return value.astimezone(UTC)  # type: ignore[no-any-return]


def add_documents(settings: MetadataSettings, prefix: str, count: int) -> None:
    """PENDING chunks nobody holds, as an ingest without a vector service
    leaves them."""
    db = Database.from_settings(settings)
    try:
        catalog = Catalog(db, settings)
        if prefix == "a":
            catalog.create_collection(CollectionSpec(name="docs"))
        documents = [DocumentInput(f"{prefix}{i}", f"Text {prefix} {i}.", {}) for i in range(count)]
        catalog.upsert_documents("docs", documents)
    finally:
        db.dispose()


def unleased_chunks(db: Database) -> int:
    return len(
        db.read(
            lambda s: s.scalars(select(ChunkRow.id).where(ChunkRow.lease_until.is_(None))).all()
        )
    )


def test_a_replica_with_a_skewed_host_clock_reads_the_databases_time(
    pg_settings: MetadataSettings, replicas: tuple[Replica, Replica]
) -> None:
    for replica in replicas:
        before = database_now(pg_settings)
        now = replica.db.clock.now()
        after = database_now(pg_settings)
        assert before - TOLERANCE <= now <= after + TOLERANCE, (before, now, after)
        # A new lease: INDEX_LEASE_SECONDS (plus under a second) of the
        # database's time, whatever the host says.
        lease = replica.indexer.new_lease()
        expiry = database_now(pg_settings) + timedelta(seconds=LEASE_SECONDS)
        assert expiry - TOLERANCE * 2 <= lease <= expiry + timedelta(seconds=1) + TOLERANCE


def test_skewed_replicas_never_take_each_others_live_leases(
    pg_settings: MetadataSettings, replicas: tuple[Replica, Replica]
) -> None:
    early, late = replicas
    add_documents(pg_settings, "a", 5)
    # The replica behind claims everything; the one ahead (to which, by its
    # own clock, that lease ran out an hour ago) finds nothing to take and
    # counts those chunks as held by another.
    _, taken = late.claim_chunks()
    assert taken == 5
    assert early.claim_chunks()[1] == 0
    docs = early.outbox.collection("docs")
    assert early.outbox.chunks_held_by_others(docs) == 5
    # And the other way round, on new work.
    add_documents(pg_settings, "b", 3)
    assert early.claim_chunks()[1] == 3
    assert late.claim_chunks()[1] == 0
    assert late.outbox.chunks_held_by_others(docs) == 8


def test_a_run_out_lease_is_taken_over_whichever_host_is_ahead(
    pg_settings: MetadataSettings, replicas: tuple[Replica, Replica]
) -> None:
    early, late = replicas
    add_documents(pg_settings, "a", 4)
    # The replica ahead claims and "crashes" (never renews nor settles): the
    # one behind takes the work over as soon as the database's clock passes
    # the lease, not an hour (its skew) plus another hour later.
    lease, taken = early.claim_chunks()
    assert taken == 4
    wait_until(
        lambda: database_now(pg_settings) > lease,
        10,
        "the lease to run out by the database's clock",
    )
    # The other way round.
    lease, taken = late.claim_chunks()
    assert taken == 4
    wait_until(lambda: database_now(pg_settings) > lease, 10, "the second lease to run out")
    assert early.claim_chunks()[1] == 4
    assert unleased_chunks(early.db) == 0


def test_deletion_leases_follow_the_databases_clock_too(
    pg_settings: MetadataSettings, replicas: tuple[Replica, Replica]
) -> None:
    early, late = replicas
    add_documents(pg_settings, "a", 3)
    db = Database.from_settings(pg_settings)
    try:
        Catalog(db, pg_settings).delete_documents("docs", ["a0", "a1", "a2"], None)
        rows = db.read(lambda s: len(s.scalars(select(VectorDeletionRow.id)).all()))
    finally:
        db.dispose()
    assert rows >= 1
    lease, taken = late.claim_deletions()
    assert taken == rows
    assert early.claim_deletions()[1] == 0  # live: not stolen
    wait_until(lambda: database_now(pg_settings) > lease, 10, "the deletion lease to run out")
    lease, taken = early.claim_deletions()
    assert taken == rows  # run out: taken over
    assert late.claim_deletions()[1] == 0
    wait_until(lambda: database_now(pg_settings) > lease, 10, "the second deletion lease")
    assert late.claim_deletions()[1] == rows


def test_the_server_measures_its_database_clock_before_serving(
    pg_settings: MetadataSettings,
) -> None:
    """create_server's host clock reaches the Database; start() measures the
    offset off the loop, so the first lease never queries on it."""

    def create() -> Any:
        return create_server(pg_settings, port=0, host_clock=behind)

    with RunningServer(create, pg_settings) as running:
        offset = running.server.database.clock.offset
        assert offset is not None
        assert abs(offset - SKEW) < TOLERANCE, offset


def test_sqlite_is_timed_by_this_hosts_clock(tmp_path: Path) -> None:
    settings = metadata_settings(tmp_path / "metadata.db")
    prepare_database(settings)
    db = Database.from_settings(settings, host_clock=ahead)
    try:
        now = db.clock.now()
        assert abs(now - utcnow()) < TOLERANCE
        assert db.clock.offset is not None and abs(db.clock.offset + SKEW) < TOLERANCE
    finally:
        db.dispose()


def test_a_clock_that_cannot_measure_again_keeps_its_offset() -> None:
    """A database down at a refresh keeps the last offset (claims fail on
    their own anyway); the very first measurement has nothing to fall back
    on and raises."""
    readings = [datetime(2030, 1, 1, tzinfo=UTC)] * 3
    clock = DatabaseClock(readings.pop, lambda: datetime(2029, 1, 1, tzinfo=UTC), refresh_seconds=0)
    first = clock.refresh()
    assert first > timedelta(days=364)
    clock.refresh_if_due()  # the readings ran out: the reader raises
    assert clock.offset == first
    with pytest.raises(IndexError):
        DatabaseClock([].pop, refresh_seconds=0).refresh_if_due()


def test_monotonic_host_clock_ignores_steps_of_the_wall_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from metadata_service.db import clock as clock_module

    host = clock_module.monotonic_utc()
    first = host()

    class Stepped(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Stepped:  # type: ignore[override]
            return datetime(2001, 1, 1, tzinfo=UTC)  # type: ignore[return-value]

    monkeypatch.setattr(clock_module, "datetime", Stepped)
    assert abs(host() - first) < timedelta(seconds=5)
