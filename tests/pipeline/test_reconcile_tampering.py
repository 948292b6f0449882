"""Reconcile against a vector service tampered with behind the metadata
service's back (issue #12, "Probed today"): a dropped vector collection while
chunks say INDEXED is reported and, on repair, re-indexed; a vector forged
under a chunk's id and copied metadata (other text, or a raw vector) is
reported (stale, or unverified: no record of the text it came from) and, on
repair, embedded again from the chunk's text."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import code_pb2

from askmojo.common.text_hash import TEXT_HASH_KEY, text_hash
from askmojo.common.v1 import common_pb2 as common
from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from askmojo.vector.v1 import embedding_service_pb2 as epb
from askmojo.vector.v1 import embedding_service_pb2_grpc as epb_grpc
from askmojo.vector.v1 import vector_service_pb2 as vpb
from askmojo.vector.v1 import vector_service_pb2_grpc as vpb_grpc
from tests.conftest import RunningServer

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
    # DENSE: the vectors are gone (the keyword index, in the database, is not).
    dense = pb.SEARCH_MODE_DENSE
    assert not stub.Search(pb.SearchRequest(collection=collection, query="ships", mode=dense)).hits

    check = stub.Reconcile(pb.ReconcileRequest(collection=collection, dry_run=True), timeout=60)
    assert check.vector_collection_missing
    assert check.missing_vectors == len(TEXTS)

    repair = stub.Reconcile(pb.ReconcileRequest(collection=collection), timeout=120)
    assert repair.vector_collection_missing
    assert repair.missing_vectors == len(TEXTS)
    hits = stub.Search(
        pb.SearchRequest(collection=collection, query="ships entering a port", mode=dense)
    )
    assert hits.hits[0].document_id == "harbor"
    assert hits.hits[0].text == TEXTS["harbor"]
    after = stub.Reconcile(pb.ReconcileRequest(collection=collection, dry_run=True), timeout=60)
    assert not after.vector_collection_missing
    assert (after.missing_vectors, after.orphan_vectors, after.stale_vectors) == (0, 0, 0)


# --- forged vectors ---------------------------------------------------------------

FORGED = "Gluons bind quarks together inside every proton and neutron."
VICTIM = "violin#0"


def index_all(stub: pb_grpc.MetadataServiceStub, collection: str, **metadata: str) -> str:
    """Indexes TEXTS; returns the vector collection."""
    written = stub.UpsertDocuments(
        pb.UpsertDocumentsRequest(
            collection=collection,
            documents=[
                pb.Document(
                    id=k,
                    text=v,
                    metadata={m: common.MetadataValue(string_value=x) for m, x in metadata.items()},
                )
                for k, v in TEXTS.items()
            ],
        ),
        timeout=60,
    )
    assert {r.state for r in written.results} == {pb.UPSERT_STATE_INDEXED}
    return stub.GetCollection(pb.GetCollectionRequest(name=collection)).vector_collection


def stored(vectors: vpb_grpc.VectorServiceStub, name: str, record_id: str) -> vpb.StoredRecord:
    got = vectors.Get(vpb.GetRequest(collection=name, ids=[record_id], include_vectors=True))
    [record] = got.records
    return record


def reconcile(
    stub: pb_grpc.MetadataServiceStub, collection: str, *, dry_run: bool
) -> tuple[int, ...]:
    """(missing, orphan, stale, unverified)."""
    r = stub.Reconcile(pb.ReconcileRequest(collection=collection, dry_run=dry_run), timeout=120)
    return r.missing_vectors, r.orphan_vectors, r.stale_vectors, r.unverified_vectors


def top(stub: pb_grpc.MetadataServiceStub, collection: str, query: str) -> pb.SearchHit:
    # DENSE: these tests are about what the vectors say.
    request = pb.SearchRequest(
        collection=collection, query=query, top_k=3, mode=pb.SEARCH_MODE_DENSE
    )
    hits = stub.Search(request).hits
    return hits[0]


def copied_metadata(record: vpb.StoredRecord) -> dict[str, common.MetadataValue]:
    """Everything a reader of the vector service sees (the indexer's _doc
    _ord _inc _gen _hash included), but the key only the service may set."""
    return {k: v for k, v in record.metadata.items() if k != TEXT_HASH_KEY}


def assert_repaired(
    stub: pb_grpc.MetadataServiceStub,
    vectors: vpb_grpc.VectorServiceStub,
    collection: str,
    name: str,
) -> None:
    record = stored(vectors, name, VICTIM)
    assert record.metadata[TEXT_HASH_KEY].string_value == text_hash(TEXTS["violin"])
    hit = top(stub, collection, TEXTS["violin"])
    assert (hit.document_id, hit.text) == ("violin", TEXTS["violin"])
    assert hit.score > 0.99  # its own text's embedding again
    assert top(stub, collection, FORGED).score < 0.5
    assert reconcile(stub, collection, dry_run=True) == (0, 0, 0, 0)


def test_a_vector_forged_with_other_text_is_stale_and_replaced(
    stub: pb_grpc.MetadataServiceStub, vectors: vpb_grpc.VectorServiceStub, collection: str
) -> None:
    name = index_all(stub, collection)
    assert reconcile(stub, collection, dry_run=True) == (0, 0, 0, 0)
    genuine = stored(vectors, name, VICTIM)
    [forged] = vectors.Upsert(
        vpb.UpsertRequest(
            collection=name,
            records=[vpb.VectorRecord(id=VICTIM, text=FORGED, metadata=copied_metadata(genuine))],
        )
    ).results
    assert forged.status.code == code_pb2.OK
    # Search joins the vector to the live chunk (same _inc, same _hash): it
    # serves the true text, ranked by the forged vector.
    hit = top(stub, collection, FORGED)
    assert (hit.document_id, hit.text) == ("violin", TEXTS["violin"])
    assert hit.score > 0.99

    assert reconcile(stub, collection, dry_run=True) == (0, 0, 1, 0)
    assert top(stub, collection, FORGED).score > 0.99  # a dry run changes nothing
    assert reconcile(stub, collection, dry_run=False) == (0, 0, 1, 0)
    assert_repaired(stub, vectors, collection, name)


def test_a_vector_forged_as_a_raw_vector_is_unverified_and_replaced(
    stub: pb_grpc.MetadataServiceStub,
    vectors: vpb_grpc.VectorServiceStub,
    vector_server: RunningServer,
    collection: str,
) -> None:
    name = index_all(stub, collection)
    genuine = stored(vectors, name, VICTIM)
    with grpc.insecure_channel(vector_server.address) as channel:
        embedded = epb_grpc.EmbeddingServiceStub(channel).Embed(epb.EmbedRequest(texts=[FORGED]))
    raw = vpb.Vector(values=embedded.embeddings[0].values)
    [forged] = vectors.Upsert(
        vpb.UpsertRequest(
            collection=name,
            records=[vpb.VectorRecord(id=VICTIM, vector=raw, metadata=copied_metadata(genuine))],
        )
    ).results
    assert forged.status.code == code_pb2.OK
    assert TEXT_HASH_KEY not in stored(vectors, name, VICTIM).metadata
    assert top(stub, collection, FORGED).document_id == "violin"

    # Nothing shows what text it came from: reported apart from stale ones
    # (vectors written before the service kept the hash look the same).
    assert reconcile(stub, collection, dry_run=True) == (0, 0, 0, 1)
    assert reconcile(stub, collection, dry_run=False) == (0, 0, 0, 1)
    assert_repaired(stub, vectors, collection, name)


def test_a_forgery_sending_the_service_key_is_refused_and_nothing_changes(
    stub: pb_grpc.MetadataServiceStub, vectors: vpb_grpc.VectorServiceStub, collection: str
) -> None:
    name = index_all(stub, collection)
    genuine = stored(vectors, name, VICTIM)
    [refused] = vectors.Upsert(
        vpb.UpsertRequest(
            collection=name,
            records=[vpb.VectorRecord(id=VICTIM, text=FORGED, metadata=genuine.metadata)],
        )
    ).results
    assert refused.status.code == code_pb2.INVALID_ARGUMENT
    assert TEXT_HASH_KEY in refused.status.message
    assert stored(vectors, name, VICTIM) == genuine
    assert reconcile(stub, collection, dry_run=True) == (0, 0, 0, 0)


def test_a_metadata_only_change_keeps_the_vector_and_its_text_hash(
    stub: pb_grpc.MetadataServiceStub, vectors: vpb_grpc.VectorServiceStub, collection: str
) -> None:
    """The indexer sends the stored vector back with the new metadata (no
    re-embedding): the vector service keeps its text hash, so Reconcile
    still verifies it."""
    name = index_all(stub, collection, shelf="a")
    before = stored(vectors, name, VICTIM)
    index_all(stub, collection, shelf="b")
    after = stored(vectors, name, VICTIM)
    assert after.metadata["shelf"].string_value == "b"
    assert after.vector == before.vector
    assert after.metadata[TEXT_HASH_KEY] == before.metadata[TEXT_HASH_KEY]
    assert reconcile(stub, collection, dry_run=True) == (0, 0, 0, 0)
