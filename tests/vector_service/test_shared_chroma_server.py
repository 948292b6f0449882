"""Vector replicas share one Chroma server (CHROMA_HOST, issue #13): two
vector services on one real `chroma run` both serve, and each sees what the
other wrote (records, a dropped collection). The embedded mode's single
owner is test_vector_api's test_second_service_on_the_same_directory_exits.

Both services borrow the session's warm embedding pool (loading the model
twice would cost ~20 s and prove nothing more here): each has its own gRPC
server, store and Chroma HTTP client, which is what a replica is."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import pytest

from askmojo.common.filters import metadata_to_proto
from askmojo.vector.v1 import vector_service_pb2 as vpb
from askmojo.vector.v1 import vector_service_pb2_grpc as vpb_grpc
from tests.conftest import RunningServer, vector_settings
from vector_service.server import VectorServer, create_server
from vector_service.store import VectorStore


class _Replica:
    """A vector service on the session's pool; stopping it leaves the pool
    (the session server's) running."""

    def __init__(self, server: VectorServer) -> None:
        self.server = server

    async def start(self) -> None:
        await self.server.start()

    async def stop(self, grace: float | None) -> None:
        await self.server.grpc_server.stop(grace)
        await self.server.batcher.stop()
        self.server.store.close()


@pytest.fixture
def replicas(
    vector_server: RunningServer, chroma_server: tuple[str, int], tmp_path: Path
) -> Iterator[list[vpb_grpc.VectorServiceStub]]:
    host, port = chroma_server
    pool = vector_server.server.pool
    stubs = []
    with ExitStack() as stack:
        for index in range(2):
            settings = vector_settings(
                tmp_path / f"unused-{index}", chroma_host=host, chroma_port=port, reflection=False
            )

            def create(settings: Any = settings) -> tuple[Any, int]:
                store = VectorStore(settings)
                store.open()
                server, bound = create_server(settings, (pool, store))
                return _Replica(server), bound

            running = stack.enter_context(RunningServer(create))
            channel = stack.enter_context(grpc.insecure_channel(running.address))
            grpc.channel_ready_future(channel).result(timeout=30)
            stubs.append(vpb_grpc.VectorServiceStub(channel))
        yield stubs


def _record(record_id: str, text: str, **metadata: object) -> vpb.VectorRecord:
    return vpb.VectorRecord(id=record_id, text=text, metadata=metadata_to_proto(metadata))  # type: ignore[arg-type]


def test_two_vector_services_on_one_chroma_server_see_each_others_writes(
    replicas: list[vpb_grpc.VectorServiceStub],
) -> None:
    first, second = replicas
    name = f"shared-{uuid.uuid4().hex[:8]}"
    assert first.EnsureCollection(vpb.EnsureCollectionRequest(name=name)).created
    # The second finds the collection the first made (not a new one).
    assert not second.EnsureCollection(vpb.EnsureCollectionRequest(name=name)).created

    ones = [_record("a", "Tides rise twice a day along the coast.", by="first")]
    twos = [_record("b", "A lighthouse keeper trims the lamp at dusk.", by="second")]
    assert [
        r.status.code
        for r in first.Upsert(vpb.UpsertRequest(collection=name, records=ones)).results
    ] == [0]
    assert [
        r.status.code
        for r in second.Upsert(vpb.UpsertRequest(collection=name, records=twos)).results
    ] == [0]

    for stub in (first, second):
        assert stub.Count(vpb.CountRequest(collection=name)).count == 2
        got = stub.Get(vpb.GetRequest(collection=name, ids=["a", "b"]))
        assert {r.id: r.metadata["by"].string_value for r in got.records} == {
            "a": "first",
            "b": "second",
        }
        ids = stub.ListIds(vpb.ListIdsRequest(collection=name, page_size=10)).ids
        assert sorted(ids) == ["a", "b"]
    # A search through either finds the other's record by its text.
    found = first.Query(vpb.QueryRequest(collection=name, query_text="lighthouse lamp", top_k=1))
    assert [m.id for m in found.matches] == ["b"]
    found = second.Query(
        vpb.QueryRequest(collection=name, query_text="tides on the coast", top_k=1)
    )
    assert [m.id for m in found.matches] == ["a"]

    # A deletion and a drop through one are seen through the other.
    assert second.Delete(vpb.DeleteRequest(collection=name, ids=["a"])).deleted_count == 1
    assert first.Count(vpb.CountRequest(collection=name)).count == 1
    assert first.DropCollection(vpb.DropCollectionRequest(name=name)).dropped
    with pytest.raises(grpc.RpcError) as info:
        second.Count(vpb.CountRequest(collection=name))
    assert info.value.code() is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
