"""The vector service's record of the text it embedded (issue #12): a text
record gets TEXT_HASH_KEY, set by the service alone; a raw vector gets none
(unless it is exactly the stored vector, which keeps its own); a caller that
sends the key is refused and nothing stored changes; the key counts against
MAX_METADATA_KEYS. Over a real socket, the real model, embedded Chroma."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.rpc import code_pb2

from askmojo.common.filters import metadata_to_proto
from askmojo.common.text_hash import TEXT_HASH_KEY, text_hash
from askmojo.common.v1 import common_pb2 as common
from askmojo.vector.v1 import embedding_service_pb2 as epb
from askmojo.vector.v1 import embedding_service_pb2_grpc as epb_grpc
from askmojo.vector.v1 import vector_service_pb2 as vpb
from askmojo.vector.v1 import vector_service_pb2_grpc as vpb_grpc
from tests.conftest import RunningServer

TEXT = "A violin maker seasons spruce for ten years before carving a top."


@pytest.fixture(scope="module")
def stub(vector_channel: grpc.Channel) -> vpb_grpc.VectorServiceStub:
    return vpb_grpc.VectorServiceStub(vector_channel)


@pytest.fixture
def collection(stub: vpb_grpc.VectorServiceStub) -> str:
    name = f"hash-{uuid.uuid4().hex[:8]}"
    stub.EnsureCollection(vpb.EnsureCollectionRequest(name=name))
    return name


def stored(stub: vpb_grpc.VectorServiceStub, collection: str, record_id: str) -> vpb.StoredRecord:
    got = stub.Get(vpb.GetRequest(collection=collection, ids=[record_id], include_vectors=True))
    [record] = got.records
    return record


def test_a_text_record_carries_the_hash_of_its_text_and_a_raw_vector_none(
    stub: vpb_grpc.VectorServiceStub, collection: str
) -> None:
    results = stub.Upsert(
        vpb.UpsertRequest(
            collection=collection,
            records=[
                vpb.VectorRecord(id="t", text=TEXT, metadata=metadata_to_proto({"_doc": "d"})),
                vpb.VectorRecord(id="v", vector=vpb.Vector(values=[0.5] * 384)),
            ],
        )
    ).results
    assert [r.status.code for r in results] == [code_pb2.OK, code_pb2.OK]
    text_record = stored(stub, collection, "t")
    # The metadata service's own reserved keys pass; the service adds its one.
    assert set(text_record.metadata) == {"_doc", TEXT_HASH_KEY}
    assert text_record.metadata[TEXT_HASH_KEY].string_value == text_hash(TEXT)
    assert TEXT_HASH_KEY not in stored(stub, collection, "v").metadata

    # The stored vector sent back as is (a metadata-only change) still is
    # that text's embedding: it keeps the hash. Any other vector loses it.
    same = list(text_record.vector.values)
    stub.Upsert(
        vpb.UpsertRequest(
            collection=collection,
            records=[
                vpb.VectorRecord(
                    id="t", vector=vpb.Vector(values=same), metadata=metadata_to_proto({"n": 2})
                )
            ],
        )
    )
    kept = stored(stub, collection, "t")
    assert set(kept.metadata) == {"n", TEXT_HASH_KEY}
    assert kept.metadata[TEXT_HASH_KEY].string_value == text_hash(TEXT)
    other = [*same[1:], same[0]]
    stub.Upsert(
        vpb.UpsertRequest(
            collection=collection,
            records=[vpb.VectorRecord(id="t", vector=vpb.Vector(values=other))],
        )
    )
    assert TEXT_HASH_KEY not in stored(stub, collection, "t").metadata


@pytest.mark.parametrize("content", ["text", "vector"])
def test_a_caller_sending_the_service_key_is_refused_and_nothing_changes(
    stub: vpb_grpc.VectorServiceStub, collection: str, content: str
) -> None:
    stub.Upsert(
        vpb.UpsertRequest(collection=collection, records=[vpb.VectorRecord(id="t", text=TEXT)])
    )
    before = stored(stub, collection, "t")
    forged = {TEXT_HASH_KEY: common.MetadataValue(string_value=text_hash(TEXT))}
    record = (
        vpb.VectorRecord(id="t", text="Gluons bind quarks into protons.", metadata=forged)
        if content == "text"
        else vpb.VectorRecord(id="t", vector=vpb.Vector(values=[0.5] * 384), metadata=forged)
    )
    [result] = stub.Upsert(vpb.UpsertRequest(collection=collection, records=[record])).results
    assert result.status.code == code_pb2.INVALID_ARGUMENT
    assert f"records[0].metadata['{TEXT_HASH_KEY}']" in result.status.message
    assert "set by the vector service itself" in result.status.message
    [streamed] = stub.UpsertStream(
        iter([vpb.UpsertStreamRequest(collection=collection, records=[record])])
    )
    assert [r.status.code for r in streamed.results] == [code_pb2.INVALID_ARGUMENT]
    assert stored(stub, collection, "t") == before
    assert stub.Count(vpb.CountRequest(collection=collection)).count == 1


def test_the_service_key_counts_against_max_metadata_keys(
    stub: vpb_grpc.VectorServiceStub,
    vector_channel: grpc.Channel,
    vector_server: RunningServer,
    collection: str,
) -> None:
    limit = vector_server.settings.max_metadata_keys
    info = epb_grpc.EmbeddingServiceStub(vector_channel).GetModelInfo(epb.GetModelInfoRequest())
    assert info.max_metadata_keys == limit - 1  # what a caller may send

    def keys(count: int) -> dict[str, common.MetadataValue]:
        return {f"k{i}": common.MetadataValue(int_value=i) for i in range(count)}

    results = stub.Upsert(
        vpb.UpsertRequest(
            collection=collection,
            records=[
                vpb.VectorRecord(id="full", text=TEXT, metadata=keys(limit - 1)),
                vpb.VectorRecord(id="over", text=TEXT, metadata=keys(limit)),
            ],
        )
    ).results
    assert [r.status.code for r in results] == [code_pb2.OK, code_pb2.INVALID_ARGUMENT]
    assert f"the limit is {limit - 1} (MAX_METADATA_KEYS, {limit}" in results[1].status.message
    assert len(stored(stub, collection, "full").metadata) == limit
