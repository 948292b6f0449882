"""Indexing work interrupted (the service stopping, a client gone) gives
its lease back at once: otherwise no indexer may take it for
INDEX_LEASE_SECONDS, and vectors of deleted documents linger that long.

The vector service is a stand-in here that never answers (the real one is
exercised in tests/pipeline); the database is a real SQLite file."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import select

from metadata_service.catalog import Catalog
from metadata_service.config import MetadataSettings
from metadata_service.db import outbox_queries
from metadata_service.db.engine import Database
from metadata_service.db.models import ChunkRow, VectorDeletionRow
from metadata_service.domain import CollectionSpec, DocumentInput
from metadata_service.indexing import Indexer
from metadata_service.server import prepare_database
from metadata_service.vector_client import RecordAck, StoredVector, VectorMatch
from tests.metadata_service.test_engine import _lock_held_by_another_process


class SilentVectorService:
    """Takes deletions and never answers them."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()

    async def delete(self, *_: Any) -> int:
        self.asked.set()
        await asyncio.Event().wait()
        return 0

    async def drop_collection(self, *_: Any) -> None:
        await self.delete()

    # Nothing here is indexed, searched or reconciled.
    async def ensure_collection(self, *_: Any) -> None:
        raise AssertionError("not used by these tests")

    def upsert_stream(self, *_: Any) -> AsyncIterator[list[RecordAck]]:
        raise AssertionError("not used by these tests")

    async def query(self, *_: Any) -> list[VectorMatch]:
        raise AssertionError("not used by these tests")

    async def list_ids(self, *_: Any) -> tuple[list[str], str]:
        raise AssertionError("not used by these tests")

    async def get(self, *_: Any, **__: Any) -> dict[str, StoredVector]:
        raise AssertionError("not used by these tests")

    async def delete_ids(self, *_: Any) -> int:
        raise AssertionError("not used by these tests")


@pytest.fixture
def stored(settings: MetadataSettings) -> Iterator[tuple[Database, MetadataSettings]]:
    prepare_database(settings)
    db = Database.from_settings(settings)
    catalog = Catalog(db, settings)
    catalog.create_collection(CollectionSpec(name="docs"))
    catalog.upsert_documents("docs", [DocumentInput("a", "Some text.", {})])
    catalog.delete_documents("docs", ["a"], None)  # a deletion, nobody holds it
    yield db, settings
    db.dispose()


def _leases(db: Database) -> list[object]:
    return list(db.read(lambda s: s.scalars(select(VectorDeletionRow.lease_until)).all()))


def test_a_deletion_cancelled_while_the_vector_service_works_is_released(
    stored: tuple[Database, MetadataSettings],
) -> None:
    db, settings = stored

    async def scenario() -> None:
        vectors = SilentVectorService()
        with ThreadPoolExecutor(2) as executor:
            indexer = Indexer(db, vectors, executor, settings)
            task = asyncio.create_task(indexer.delete_pending(deadline=60))
            await asyncio.wait_for(vectors.asked.wait(), 10)
            assert _leases(db) != [None]  # claimed
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
    assert _leases(db) == [None]


def test_a_deletion_cancelled_while_it_is_being_claimed_is_released(
    stored: tuple[Database, MetadataSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim commits in its thread even though its caller was cancelled:
    the caller waits for it and gives it back."""
    db, settings = stored
    write = db.write
    writing = threading.Event()

    def noted_write(work: Any) -> Any:
        writing.set()
        return write(work)

    monkeypatch.setattr(db, "write", noted_write)

    async def scenario() -> None:
        vectors = SilentVectorService()
        with (
            ThreadPoolExecutor(2) as executor,
            _lock_held_by_another_process(settings, 60) as holder,
        ):
            indexer = Indexer(db, vectors, executor, settings)
            task = asyncio.create_task(indexer.delete_pending(deadline=60))
            # The claim's write has begun in its thread and waits for its turn
            # (the other process holds the lock until it is killed).
            assert await asyncio.to_thread(writing.wait, 10)
            task.cancel()  # lands at once: the task awaits the (shielded) claim
            holder.kill()  # now the claim may commit
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 10)
        assert not vectors.asked.is_set()

    asyncio.run(scenario())
    assert _leases(db) == [None]


def _chunk_leases(db: Database) -> list[object]:
    return list(db.read(lambda s: s.scalars(select(ChunkRow.lease_until)).all()))


def test_chunks_claimed_by_a_cancelled_pass_are_released(
    settings: MetadataSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The background pass was stopped while its claim of PENDING chunks was
    committing (made slow here): the claim lands, and is given back."""
    prepare_database(settings)
    db = Database.from_settings(settings)
    catalog = Catalog(db, settings)
    catalog.create_collection(CollectionSpec(name="docs"))
    catalog.upsert_documents("docs", [DocumentInput("a", "Some text.", {})])
    claim_chunks = outbox_queries.claim_chunks
    claiming, cancelled = threading.Event(), threading.Event()

    def slow_claim(*args: Any, **kwargs: Any) -> list[int]:
        claiming.set()
        assert cancelled.wait(10), "the test never cancelled the pass"
        return claim_chunks(*args, **kwargs)

    monkeypatch.setattr(outbox_queries, "claim_chunks", slow_claim)

    async def scenario() -> None:
        with ThreadPoolExecutor(2) as executor:
            indexer = Indexer(db, SilentVectorService(), executor, settings)
            task = asyncio.create_task(indexer.drain_once(deadline=60))
            # The claim runs in a thread: a threading.Event, waited for off the loop.
            assert await asyncio.to_thread(claiming.wait, 10)
            task.cancel()
            cancelled.set()  # the claim commits only after its pass was cancelled
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 10)

    try:
        asyncio.run(scenario())
        assert _chunk_leases(db) == [None]
    finally:
        db.dispose()
