"""Reconcile against a vector service tampered with behind the metadata
service's back (issue #12, "Probed today"): a dropped vector collection while
chunks say INDEXED is reported and, on repair, re-indexed."""

from __future__ import annotations

import pytest

from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from askmojo.vector.v1 import vector_service_pb2 as vpb
from askmojo.vector.v1 import vector_service_pb2_grpc as vpb_grpc

pytestmark = pytest.mark.slow

TEXTS = {
    "harbor": "The harbor master logs every ship that enters before dawn.",
    "violin": "A violin maker seasons spruce for ten years before carving a top.",
    "glacier": "The glacier retreated two kilometres in the last century.",
}


def test_a_dropped_vector_collection_is_reported_and_rebuilt(
    stub: pb_grpc.MetadataServiceStub, vectors: vpb_grpc.VectorServiceStub, collection: str
) -> None:
    written = stub.UpsertDocuments(
        pb.UpsertDocumentsRequest(
            collection=collection,
            documents=[pb.Document(id=k, text=v) for k, v in TEXTS.items()],
        ),
        timeout=60,
    )
    assert {r.state for r in written.results} == {pb.UPSERT_STATE_INDEXED}
    name = stub.GetCollection(pb.GetCollectionRequest(name=collection)).vector_collection
    vectors.DropCollection(vpb.DropCollectionRequest(name=name))
    assert not stub.Search(pb.SearchRequest(collection=collection, query="ships")).hits

    check = stub.Reconcile(pb.ReconcileRequest(collection=collection, dry_run=True), timeout=60)
    assert check.vector_collection_missing
    assert check.missing_vectors == len(TEXTS)

    repair = stub.Reconcile(pb.ReconcileRequest(collection=collection), timeout=120)
    assert repair.vector_collection_missing
    assert repair.missing_vectors == len(TEXTS)
    hits = stub.Search(pb.SearchRequest(collection=collection, query="ships entering a port"))
    assert hits.hits[0].document_id == "harbor"
    assert hits.hits[0].text == TEXTS["harbor"]
    after = stub.Reconcile(pb.ReconcileRequest(collection=collection, dry_run=True), timeout=60)
    assert not after.vector_collection_missing
    assert (after.missing_vectors, after.orphan_vectors, after.stale_vectors) == (0, 0, 0)
