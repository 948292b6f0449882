"""A delete by filter goes DELETE_BATCH_DOCUMENTS documents at a time, each
batch's vectors in one vector call: the calls (and the ids held) are bounded
by the batch size, not by how many documents match."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from askmojo.vector.v1 import vector_service_pb2_grpc as vpb_grpc
from metadata_service.config import MetadataSettings
from metadata_service.vector_client import VectorClient
from tests.pipeline.conftest import metadata_stub
from tests.pipeline.test_pipeline import doc, equals, upsert, vector_count, vector_name

BATCH = 4


@pytest.fixture
def delete_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every vector removal call the metadata service makes (the real
    client, counted from outside)."""
    calls: list[str] = []
    for name in ("delete", "delete_ids"):
        original = getattr(VectorClient, name)

        def counted(self: VectorClient, *args: Any, _o: Any = original, _n: str = name) -> Any:
            calls.append(_n)
            return _o(self, *args)

        monkeypatch.setattr(VectorClient, name, counted)
    return calls


@pytest.fixture
def small_batches(paired_settings: MetadataSettings) -> Iterator[pb_grpc.MetadataServiceStub]:
    with metadata_stub(
        paired_settings.model_copy(update={"delete_batch_documents": BATCH})
    ) as stub:
        yield stub


def test_delete_by_filter_removes_vectors_in_batched_calls(
    small_batches: pb_grpc.MetadataServiceStub,
    vectors: vpb_grpc.VectorServiceStub,
    delete_calls: list[str],
) -> None:
    stub = small_batches
    collection = f"del-{uuid.uuid4().hex[:8]}"
    stub.CreateCollection(pb.CreateCollectionRequest(name=collection))
    gone = [doc(f"g{i:02}", f"Note {i} about bees and honey.", kind="gone") for i in range(10)]
    kept = [doc(f"k{i}", f"Note number {i} about ships and sails.", kind="kept") for i in range(2)]
    states = upsert(stub, collection, *gone, *kept)
    assert {state for _, state in states} == {pb.UPSERT_STATE_INDEXED}
    name = vector_name(stub, collection)
    assert vector_count(vectors, name) == 12

    response = stub.DeleteDocuments(
        pb.DeleteDocumentsRequest(collection=collection, filter=equals("kind", "gone")),
        timeout=120,
    )
    assert response.deleted_count == 10
    assert vector_count(vectors, name) == 2  # gone with the call, not later
    assert delete_calls == ["delete"] * 3  # ceil(10 / 4), not one per document
    listed = stub.ListDocuments(pb.ListDocumentsRequest(collection=collection))
    assert sorted(d.id for d in listed.documents) == ["k0", "k1"]
    hits = stub.Search(pb.SearchRequest(collection=collection, query="bees and honey"), timeout=60)
    assert {h.document_id for h in hits.hits} == {"k0", "k1"}
