"""An indexing pass that outlives INDEX_LEASE_SECONDS keeps its chunks: the
indexer renews their lease (every third of it) while it sends them, so no
other indexer takes them over and sends them again (test_crash's resending
client was flaky under load when a slow pass lost its lease mid-way).

The real vector service (real model, embedded Chroma) and a real SQLite
file; the pass is held, not slowed: the client holds its UpsertStream until
the test has seen the original lease run out, then lets it through."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from metadata_service.catalog import Catalog
from metadata_service.config import MetadataSettings
from metadata_service.db.engine import Database
from metadata_service.db.models import ChunkRow, utcnow
from metadata_service.domain import CollectionSpec, DocumentInput, IndexState
from metadata_service.indexing import Indexer
from metadata_service.outbox import Outbox
from metadata_service.server import prepare_database
from tests.conftest import RunningServer, metadata_settings
from tests.metadata_service.held_client import HeldVectorClient
from tests.waiting import until

LEASE_SECONDS = 1.5
TEXTS = [f"Paragraph {i} about lighthouses, tides and the keepers of the coast." for i in range(6)]


@pytest.fixture
def stored(
    tmp_path: Path, vector_server: RunningServer
) -> Iterator[tuple[Database, Catalog, MetadataSettings]]:
    settings = metadata_settings(
        tmp_path / "metadata.db",
        vector_service_address=vector_server.address,
        index_lease_seconds=LEASE_SECONDS,
    )
    prepare_database(settings)
    db = Database.from_settings(settings)
    catalog = Catalog(db, settings)
    catalog.create_collection(CollectionSpec(name="docs"))
    yield db, catalog, settings
    db.dispose()


def _chunk_rows(db: Database) -> list[tuple[IndexState, datetime | None]]:
    rows = db.read(lambda s: s.execute(select(ChunkRow.state, ChunkRow.lease_until)).all())
    return [(state, lease) for state, lease in rows]


def test_a_pass_outliving_its_lease_keeps_its_chunks(
    stored: tuple[Database, Catalog, MetadataSettings], vector_server: RunningServer
) -> None:
    db, catalog, settings = stored

    async def scenario() -> None:
        client = HeldVectorClient(vector_server.address)
        try:
            with ThreadPoolExecutor(4) as executor:
                indexer = Indexer(db, client, executor, settings)
                # Written under the call's lease, as an ingest call does.
                lease = indexer.new_lease()
                documents = [DocumentInput(f"d{i}", t, {}) for i, t in enumerate(TEXTS)]
                await asyncio.to_thread(catalog.upsert_documents, "docs", documents, lease)
                chunks = len(await asyncio.to_thread(_chunk_rows, db))
                passing = asyncio.create_task(indexer.index_leased(lease, time.monotonic() + 60))
                await asyncio.wait_for(client.sending.wait(), 30)

                # The lease the chunks were written under has run out ...
                margin = timedelta(seconds=0.2)
                await until(lambda: utcnow() > lease + margin, 10, "the first lease ran out")
                # ... yet they are still held (under a renewed lease), so
                # another indexer's claim finds nothing to take.
                rows = await asyncio.to_thread(_chunk_rows, db)
                now = utcnow()
                assert all(
                    s is IndexState.PENDING and held is not None and held > now for s, held in rows
                ), rows
                other = Outbox(db)
                taken = await asyncio.to_thread(other.claim_chunks, indexer.new_lease(), 100)
                assert taken == 0

                client.go.set()
                report = await asyncio.wait_for(passing, 60)
                assert (report.indexed, report.failed, report.released) == (chunks, 0, 0)
        finally:
            await client.close()

    asyncio.run(scenario())
    assert _chunk_rows(db) == [(IndexState.INDEXED, None)] * len(TEXTS)
