"""A send that lost the race still wrote its vectors (found by
tests/pipeline/test_pg_replicas.py: the same documents rewritten through
two replicas at once left some INDEXED with a vector of the other text).

Indexer A sends version 1 of a document; meanwhile the document is
rewritten (version 2) or deleted, and indexer B does its part (indexes
version 2, removes the vectors). A's upsert then lands: vector ids are
deterministic, so it replaces version 2's vector with version 1's text (a
chunk INDEXED with a vector of another text), or leaves an orphan of a
deleted document. Its settle already ignored the acknowledgements (the
chunks were no longer held under its lease); now it also sends the
document again, or removes that version's vectors through the deletion
outbox, so the next pass puts things right with no Reconcile.

Real vector service (the session's), real SQLite file. The race is made,
not hoped for: A's client holds its UpsertStream until B is done."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from sqlalchemy import select

from askmojo.common.text_hash import TEXT_HASH_KEY, text_hash
from askmojo.vector.v1 import vector_service_pb2 as vpb
from askmojo.vector.v1 import vector_service_pb2_grpc as vpb_grpc
from metadata_service.catalog import Catalog
from metadata_service.config import MetadataSettings
from metadata_service.db.engine import Database
from metadata_service.db.models import ChunkRow, DocumentRow
from metadata_service.domain import DocumentInput, IndexState
from metadata_service.indexing import Indexer
from metadata_service.vector_client import VectorClient
from tests.conftest import RunningServer
from tests.metadata_service.held_client import HeldVectorClient

OLD = "The old text: tides rise twice a day along the northern coast."
NEW = "The new text: a lighthouse keeper trims the lamp every evening."


def _vectors(address: str, name: str) -> dict[str, str]:
    """Every vector of the collection: id -> the hash of the text it was made from."""
    with grpc.insecure_channel(address) as channel:
        stub = vpb_grpc.VectorServiceStub(channel)
        ids = stub.ListIds(vpb.ListIdsRequest(collection=name, page_size=100)).ids
        if not ids:
            return {}
        got = stub.Get(vpb.GetRequest(collection=name, ids=list(ids)))
    return {r.id: r.metadata[TEXT_HASH_KEY].string_value for r in got.records}


def _race(
    stored: tuple[Database, Catalog, MetadataSettings],
    address: str,
    meanwhile: str,
) -> None:
    """A sends OLD; `meanwhile` ("rewrite", "delete" or "recreate": deleted,
    then created again under the same id) B does its part; A's upsert
    lands; then one background pass of B."""
    db, catalog, settings = stored

    async def scenario() -> None:
        held = HeldVectorClient(address)
        plain = VectorClient(address, 4 * 1024 * 1024)
        try:
            with ThreadPoolExecutor(4) as executor:
                a = Indexer(db, held, executor, settings)
                b = Indexer(db, plain, executor, settings)
                lease = a.new_lease()
                await asyncio.to_thread(
                    catalog.upsert_documents, "docs", [DocumentInput("d", OLD, {})], lease
                )
                sending = asyncio.create_task(a.index_leased(lease, time.monotonic() + 60))
                await asyncio.wait_for(held.sending.wait(), 30)
                other = b.new_lease()
                if meanwhile == "rewrite":
                    await asyncio.to_thread(
                        catalog.upsert_documents, "docs", [DocumentInput("d", NEW, {})], other
                    )
                    report = await b.index_leased(other, time.monotonic() + 60)
                    assert report.indexed == 1
                else:
                    await asyncio.to_thread(catalog.delete_documents, "docs", ["d"], None, other)
                    await b.delete_pending(time.monotonic() + 60, other)
                if meanwhile == "recreate":
                    # The same id again: a new row, a new incarnation, indexed.
                    again = b.new_lease()
                    await asyncio.to_thread(
                        catalog.upsert_documents, "docs", [DocumentInput("d", NEW, {})], again
                    )
                    report = await b.index_leased(again, time.monotonic() + 60)
                    assert report.indexed == 1
                held.go.set()
                late = await asyncio.wait_for(sending, 60)
                # Acknowledged by the vector service, ignored by the settle.
                assert late.indexed == 1
                await b.drain_once(time.monotonic() + 60)
        finally:
            await held.close()
            await plain.close()

    asyncio.run(scenario())


def test_a_late_send_of_an_older_text_is_sent_again(
    stored: tuple[Database, Catalog, MetadataSettings], vector_server: RunningServer
) -> None:
    db, catalog, _ = stored
    _race(stored, vector_server.address, "rewrite")
    name = catalog.get_collection("docs").vector_collection
    assert _vectors(vector_server.address, name) == {"d#0": text_hash(NEW)}
    states = db.read(lambda s: s.execute(select(ChunkRow.state, ChunkRow.lease_until)).all())
    assert [tuple(r) for r in states] == [(IndexState.INDEXED, None)]


def test_a_late_send_of_a_deleted_document_is_removed(
    stored: tuple[Database, Catalog, MetadataSettings], vector_server: RunningServer
) -> None:
    db, catalog, _ = stored
    _race(stored, vector_server.address, "delete")
    name = catalog.get_collection("docs").vector_collection
    assert _vectors(vector_server.address, name) == {}
    assert db.read(lambda s: s.execute(select(DocumentRow.id)).all()) == []


def test_a_late_send_of_a_deleted_document_spares_its_successor(
    stored: tuple[Database, Catalog, MetadataSettings], vector_server: RunningServer
) -> None:
    """Found by the soak (seed 15, scaled): the document was deleted and
    created again under the same id (a new incarnation) and indexed while
    A still sent the old one. A's late upsert replaced the new incarnation's
    vector (same id); removing the old incarnation's vectors then left the
    new one's chunk INDEXED with no vector until a Reconcile. A finished
    removal of a document's vectors now sends again whatever document holds
    that id now, from the first ordinal removed."""
    db, catalog, _ = stored
    _race(stored, vector_server.address, "recreate")
    name = catalog.get_collection("docs").vector_collection
    assert _vectors(vector_server.address, name) == {"d#0": text_hash(NEW)}
    states = db.read(lambda s: s.execute(select(ChunkRow.state, ChunkRow.lease_until)).all())
    assert [tuple(r) for r in states] == [(IndexState.INDEXED, None)]
