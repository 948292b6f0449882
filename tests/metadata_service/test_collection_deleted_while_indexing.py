"""A collection deleted while an indexer sends its chunks leaves no vector
collection behind (found while writing tests/pipeline/test_pg_replicas.py,
where one replica deletes a collection another still ingests into).

The indexer creates a chunk's vector collection when it first sends to it
(and again when it finds it gone). If the collection was deleted after the
chunks were claimed and its vector collection dropped just before that
creation, the indexer made it again and filled it: an orphan nobody would
ever drop (the deletion was done) and Reconcile cannot see (no collection
names it). Now the indexer checks, after creating, that the collection
still exists, and drops what it made when it does not.

Real vector service (the session's), real SQLite file; the deletion is
made to land at that very moment by the client, before it creates."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from askmojo.vector.v1 import vector_service_pb2 as vpb
from askmojo.vector.v1 import vector_service_pb2_grpc as vpb_grpc
from metadata_service.catalog import Catalog
from metadata_service.config import MetadataSettings
from metadata_service.db.engine import Database
from metadata_service.domain import DocumentInput
from metadata_service.indexing import Indexer
from metadata_service.vector_client import VectorClient
from tests.conftest import RunningServer


class DeletedFirstClient(VectorClient):
    """The real client; just before it creates a vector collection, the
    collection is deleted and its vector collection dropped (what a
    DeleteCollection call elsewhere does, commit then drop)."""

    def __init__(self, address: str, catalog: Catalog) -> None:
        super().__init__(address, 4 * 1024 * 1024)
        self._catalog = catalog
        self.deleted = False

    async def ensure_collection(
        self, name: str, dimension: int, model: str, deadline: float
    ) -> None:
        if not self.deleted:
            self.deleted = True
            await asyncio.to_thread(self._catalog.delete_collection, "docs")
            await self.drop_collection(name, deadline)
        await super().ensure_collection(name, dimension, model, deadline)


def test_a_collection_deleted_mid_pass_leaves_no_vector_collection(
    stored: tuple[Database, Catalog, MetadataSettings], vector_server: RunningServer
) -> None:
    db, catalog, settings = stored
    name = catalog.get_collection("docs").vector_collection

    async def scenario() -> None:
        client = DeletedFirstClient(vector_server.address, catalog)
        try:
            with ThreadPoolExecutor(2) as executor:
                indexer = Indexer(db, client, executor, settings)
                lease = indexer.new_lease()
                documents = [DocumentInput(f"d{i}", f"Text number {i}.", {}) for i in range(3)]
                await asyncio.to_thread(catalog.upsert_documents, "docs", documents, lease)
                report = await indexer.index_leased(lease, time.monotonic() + 60)
                assert client.deleted
                assert report.indexed == 0
        finally:
            await client.close()

    asyncio.run(scenario())
    with grpc.insecure_channel(vector_server.address) as channel:
        vectors = vpb_grpc.VectorServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            vectors.Count(vpb.CountRequest(collection=name))
        assert info.value.code() is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
