"""A document's state when two indexers settle its chunks at once, on
PostgreSQL (found by tests/pipeline/test_pg_replicas.py in CI, where 8
documents stayed PENDING past its 30 s wait).

Under READ COMMITTED, each settle computed the document's state from a
snapshot without the other's uncommitted chunk: the second one's UPDATE
waited for the first's row lock, then kept its old snapshot, and wrote
PENDING over a document whose every chunk was INDEXED, for good. Now a
settle locks its documents first, and the state is computed after the
wait.

The moment is made, not hoped for: the first settle is held inside its
transaction, after its refresh, until the second is seen waiting for a
lock in pg_stat_activity (or has finished). Skipped, with the reason,
when PostgreSQL is unreachable.

And Reconcile's repair settles a document left so (on each backend)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from metadata_service.catalog import Catalog
from metadata_service.config import MetadataSettings
from metadata_service.db import outbox_queries
from metadata_service.db.engine import Database
from metadata_service.domain import CollectionSpec, DocumentInput, IndexState
from metadata_service.outbox import Outbox
from metadata_service.server import prepare_database
from tests.conftest import postgres_lock_waiters
from tests.waiting import wait_until

# Two chunks at the default 400 characters.
LONG_TEXT = " ".join(f"word{i}" for i in range(80))


@pytest.fixture
def databases(pg_settings: MetadataSettings) -> Iterator[tuple[Database, Database]]:
    """Two engines, as two replicas have."""
    first, second = Database.from_settings(pg_settings), Database.from_settings(pg_settings)
    try:
        yield first, second
    finally:
        first.dispose()
        second.dispose()


@pytest.mark.postgres
def test_two_chunks_of_one_document_settled_at_once(
    pg_settings: MetadataSettings,
    databases: tuple[Database, Database],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first_db, second_db = databases
    catalog = Catalog(first_db, pg_settings)
    catalog.create_collection(CollectionSpec(name="docs"))
    [outcome] = catalog.upsert_documents("docs", [DocumentInput("d1", LONG_TEXT, {})])
    assert outcome.chunk_count == 2

    first, second = Outbox(first_db), Outbox(second_db)
    # Each indexer holds one of the document's two chunks.
    leases = [first.now() + timedelta(minutes=5, microseconds=n) for n in (1, 2)]
    assert first.claim_chunks(leases[0], 1) == 1
    assert second.claim_chunks(leases[1], 1) == 1
    [one] = first.claimed(leases[0]).chunks
    [other] = second.claimed(leases[1]).chunks
    assert one.document_pk == other.document_pk

    def settle(outbox: Outbox, lease: Any, chunk: Any) -> Callable[[], None]:
        return lambda: outbox.settle_chunks(
            lease, [chunk.chunk_id], {}, [], [], sent={chunk.chunk_id: chunk}
        )

    errors: list[BaseException] = []
    finished = threading.Event()

    def second_settle() -> None:
        try:
            settle(second, leases[1], other)()
        except BaseException as exc:
            errors.append(exc)
        finally:
            finished.set()

    racing = threading.Thread(target=second_settle)
    real_refresh = outbox_queries.refresh_document_states

    def refresh_then_race(session: Any, *args: Any, **kwargs: Any) -> None:
        real_refresh(session, *args, **kwargs)
        # Still inside the first settle's transaction: the second runs now,
        # up to its end or until it waits for this one.
        if not racing.is_alive() and not finished.is_set():
            racing.start()
            wait_until(
                lambda: finished.is_set() or postgres_lock_waiters(pg_settings.database_url),
                20,
                "the second settle finished or waiting for the first",
            )

    monkeypatch.setattr(outbox_queries, "refresh_document_states", refresh_then_race)
    settle(first, leases[0], one)()
    assert finished.wait(20), "the second settle never finished"
    assert not errors, errors

    states = first.document_states("docs", ["d1"])
    assert states["d1"].state is IndexState.INDEXED, states


def test_reconcile_repair_settles_a_document_left_pending(
    backend_settings: MetadataSettings,
) -> None:
    prepare_database(backend_settings)
    db = Database.from_settings(backend_settings)
    try:
        catalog, outbox = Catalog(db, backend_settings), Outbox(db)
        catalog.create_collection(CollectionSpec(name="docs"))
        catalog.upsert_documents("docs", [DocumentInput("d1", LONG_TEXT, {})])
        lease = outbox.now() + timedelta(minutes=5)
        assert outbox.claim_chunks(lease, 10) == 2
        held = outbox.claimed(lease).chunks
        outbox.settle_chunks(lease, [c.chunk_id for c in held], {}, [], [])
        assert outbox.document_states("docs", ["d1"])["d1"].state is IndexState.INDEXED
        # What the race above used to leave: every chunk INDEXED, the document not.
        db.write(lambda s: s.execute(text("UPDATE documents SET state = 'PENDING'")))
        target = outbox.collection("docs")

        assert outbox.resume_unfinished(target, repair=False) == 0
        assert outbox.document_states("docs", ["d1"])["d1"].state is IndexState.PENDING
        assert outbox.resume_unfinished(target, repair=True) == 0
        assert outbox.document_states("docs", ["d1"])["d1"].state is IndexState.INDEXED
    finally:
        db.dispose()
