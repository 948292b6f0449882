"""A removal by filter on one vector replica took the vector another replica
had just written under the same id (issue #13, the scaled soak's shape).

The vector service removes by filter as a read of the matching ids, then
their deletion (vector_service/store.py): atomic within one replica (its
write lock), not across replicas sharing a Chroma server. Document "d" is
deleted (its old incarnation's vectors queued for removal) and created
again under the same id; replica 1 reads the old vector's id, replica 2
stores the new incarnation's vector (INDEXED), then replica 1 deletes the
id it read: the new vector. The removal's settle now sends again the
chunks of the document holding that id now, so the next pass restores it.

Real `chroma run` server, two real vector services on it (the session's
warm pool), real SQLite file; replica 1's store is held between its read
and its deletion, so the moment is made, not hoped for."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import select

from askmojo.common.text_hash import TEXT_HASH_KEY, text_hash
from askmojo.vector.v1 import vector_service_pb2 as vpb
from askmojo.vector.v1 import vector_service_pb2_grpc as vpb_grpc
from metadata_service.catalog import Catalog
from metadata_service.db.engine import Database
from metadata_service.db.models import ChunkRow
from metadata_service.domain import CollectionSpec, DocumentInput, IndexState
from metadata_service.indexing import Indexer
from metadata_service.server import prepare_database
from metadata_service.vector_client import VectorClient
from tests.conftest import RunningServer, metadata_settings, vector_settings
from tests.vector_service.test_shared_chroma_server import _Replica
from vector_service.config import VectorSettings
from vector_service.server import create_server
from vector_service.store import VectorStore

OLD = "The old text: tides rise twice a day along the northern coast."
NEW = "The new text: a lighthouse keeper trims the lamp every evening."


class HeldStore(VectorStore):
    """A store whose record deletions, once `hold` is set, wait for `go`
    after reading the ids (between the two steps of a delete by filter)."""

    def __init__(self, settings: VectorSettings) -> None:
        super().__init__(settings)
        self.hold = threading.Event()
        self.reached = threading.Event()
        self.go = threading.Event()

    def _get(self, name: str) -> Any:
        collection = super()._get(name)
        store = self

        class Held:
            def __getattr__(self, attr: str) -> Any:
                return getattr(collection, attr)

            def delete(self, **kwargs: Any) -> Any:
                if store.hold.is_set():
                    store.reached.set()
                    assert store.go.wait(60)
                return collection.delete(**kwargs)

        return Held()


@pytest.fixture
def replicas(
    vector_server: RunningServer, chroma_server: tuple[str, int], tmp_path: Path
) -> Iterator[tuple[HeldStore, str, str]]:
    """Two vector services on one Chroma server: the first's store held."""
    host, port = chroma_server
    pool = vector_server.server.pool
    stores: list[HeldStore] = []
    addresses = []
    with ExitStack() as stack:
        for index in range(2):
            settings = vector_settings(
                tmp_path / f"unused-{index}", chroma_host=host, chroma_port=port, reflection=False
            )

            def create(settings: Any = settings) -> tuple[Any, int]:
                store = HeldStore(settings)
                store.open()
                stores.append(store)
                server, bound = create_server(settings, (pool, store))
                return _Replica(server), bound

            running = stack.enter_context(RunningServer(create))
            addresses.append(running.address)
        yield stores[0], addresses[0], addresses[1]


def _vectors(address: str, name: str) -> dict[str, str]:
    """Every vector of the collection: id -> the hash of the text it was made from."""
    with grpc.insecure_channel(address) as channel:
        stub = vpb_grpc.VectorServiceStub(channel)
        ids = stub.ListIds(vpb.ListIdsRequest(collection=name, page_size=100)).ids
        if not ids:
            return {}
        got = stub.Get(vpb.GetRequest(collection=name, ids=list(ids)))
    return {r.id: r.metadata[TEXT_HASH_KEY].string_value for r in got.records}


def test_a_removal_by_filter_spares_a_vector_another_replica_wrote_meanwhile(
    replicas: tuple[HeldStore, str, str], tmp_path: Path
) -> None:
    held, first, second = replicas
    settings = metadata_settings(tmp_path / "metadata.db", vector_service_address=second)
    prepare_database(settings)
    db = Database.from_settings(settings)
    catalog = Catalog(db, settings)
    catalog.create_collection(CollectionSpec(name="docs"))
    name = catalog.get_collection("docs").vector_collection

    async def scenario() -> None:
        one = VectorClient(first, 4 * 1024 * 1024)
        two = VectorClient(second, 4 * 1024 * 1024)
        try:
            with ThreadPoolExecutor(4) as executor:
                a = Indexer(db, one, executor, settings)
                b = Indexer(db, two, executor, settings)
                lease = b.new_lease()
                await asyncio.to_thread(
                    catalog.upsert_documents, "docs", [DocumentInput("d", OLD, {})], lease
                )
                assert (await b.index_leased(lease, time.monotonic() + 60)).indexed == 1
                # Deleted: the old incarnation's vectors queued for removal,
                # which replica 1 starts and is held in.
                removal = a.new_lease()
                await asyncio.to_thread(catalog.delete_documents, "docs", ["d"], None, removal)
                held.hold.set()
                removing = asyncio.create_task(a.delete_pending(time.monotonic() + 60, removal))
                assert await asyncio.to_thread(held.reached.wait, 60)
                # Meanwhile created again and indexed through replica 2.
                again = b.new_lease()
                await asyncio.to_thread(
                    catalog.upsert_documents, "docs", [DocumentInput("d", NEW, {})], again
                )
                assert (await b.index_leased(again, time.monotonic() + 60)).indexed == 1
                held.go.set()
                assert await asyncio.wait_for(removing, 60) == 1
                await b.drain_once(time.monotonic() + 60)
        finally:
            held.go.set()
            await one.close()
            await two.close()

    try:
        asyncio.run(scenario())
        assert _vectors(second, name) == {"d#0": text_hash(NEW)}
        states = db.read(lambda s: s.execute(select(ChunkRow.state, ChunkRow.lease_until)).all())
        assert [tuple(r) for r in states] == [(IndexState.INDEXED, None)]
    finally:
        db.dispose()
