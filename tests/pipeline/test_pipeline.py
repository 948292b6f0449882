"""Both services end to end over real sockets: ingest indexes, search joins,
changes replace, deletes cascade, reconcile finds and repairs drift."""

from __future__ import annotations

import itertools
from pathlib import Path

import grpc
import pytest
from google.rpc import code_pb2

from askmojo.common.filters import metadata_to_proto
from askmojo.common.v1 import common_pb2 as common
from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from askmojo.vector.v1 import vector_service_pb2 as vpb
from askmojo.vector.v1 import vector_service_pb2_grpc as vpb_grpc
from metadata_service.config import MetadataSettings
from metadata_service.server import prepare_database
from tests.conftest import RunningServer
from tests.pipeline.conftest import eventually

Stub = pb_grpc.MetadataServiceStub

TEXTS = {
    "sqlite": "SQLite in write-ahead-log mode lets readers keep reading while one writer commits.",
    "grpc": "gRPC streams carry batches of messages in both directions over one HTTP/2 connection.",
    "cats": "Cats sleep for most of the day and hunt small animals at dawn and dusk.",
}


def doc(doc_id: str, text: str, **metadata: object) -> pb.Document:
    return pb.Document(id=doc_id, text=text, metadata=metadata_to_proto(metadata))  # type: ignore[arg-type]


def upsert(stub: Stub, collection: str, *docs: pb.Document) -> list[tuple[str, int]]:
    response = stub.UpsertDocuments(
        pb.UpsertDocumentsRequest(collection=collection, documents=list(docs)), timeout=120
    )
    return [(r.id, r.state) for r in response.results]


def vector_name(stub: Stub, collection: str) -> str:
    return stub.GetCollection(pb.GetCollectionRequest(name=collection)).vector_collection


def vector_count(vectors: vpb_grpc.VectorServiceStub, name: str) -> int:
    try:
        return vectors.Count(vpb.CountRequest(collection=name)).count
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
            return 0
        raise


def search(stub: Stub, collection: str, query: str, **kwargs: object) -> list[pb.SearchHit]:
    return list(
        stub.Search(
            pb.SearchRequest(collection=collection, query=query, **kwargs),  # type: ignore[arg-type]
            timeout=60,
        ).hits
    )


def equals(key: str, value: str) -> common.Filter:
    return common.Filter(
        condition=common.Condition(
            key=key, op=common.OPERATOR_EQ, value=common.MetadataValue(string_value=value)
        )
    )


def test_ingested_documents_are_indexed_and_found(stub: Stub, collection: str) -> None:
    states = upsert(stub, collection, *(doc(k, v, topic=k) for k, v in TEXTS.items()))
    assert states == [(k, pb.UPSERT_STATE_INDEXED) for k in TEXTS]
    hits = search(stub, collection, "Which database allows concurrent readers?", top_k=3)
    best = hits[0]
    assert best.document_id == "sqlite"
    assert best.chunk_id == "sqlite#0" and best.text == TEXTS["sqlite"]
    assert best.metadata["topic"].string_value == "sqlite"
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits))
    assert not any(k.startswith("_") for h in hits for k in h.metadata)  # reserved keys stay inside
    listed = stub.ListDocuments(pb.ListDocumentsRequest(collection=collection))
    assert {d.state for d in listed.documents} == {pb.DOCUMENT_STATE_INDEXED}


def test_a_filter_finds_rare_documents(stub: Stub, collection: str) -> None:
    """The filter runs inside the index: one match among many is still found."""
    common_docs = [
        doc(f"n{i}", f"Notes about database tuning, part {i}.", kind="common") for i in range(40)
    ]
    upsert(stub, collection, *common_docs, doc("rare", TEXTS["cats"], kind="rare"))
    hits = search(stub, collection, "database tuning", top_k=3, filter=equals("kind", "rare"))
    assert [h.document_id for h in hits] == ["rare"]


def test_unchanged_reembeds_nothing_and_changes_replace_old_chunks(
    stub: Stub, collection: str, vectors: vpb_grpc.VectorServiceStub
) -> None:
    long_text = " ".join(
        f"Paragraph {i} talks about lighthouses and the sea." * 3 for i in range(12)
    )
    assert upsert(stub, collection, doc("d", long_text)) == [("d", pb.UPSERT_STATE_INDEXED)]
    name = vector_name(stub, collection)
    chunks = stub.GetDocument(pb.GetDocumentRequest(collection=collection, id="d")).chunk_count
    assert chunks > 2 and vector_count(vectors, name) == chunks
    assert upsert(stub, collection, doc("d", long_text)) == [("d", pb.UPSERT_STATE_UNCHANGED)]
    assert upsert(stub, collection, doc("d", TEXTS["grpc"])) == [("d", pb.UPSERT_STATE_INDEXED)]
    eventually(lambda: vector_count(vectors, name) == 1, what="old chunks' vectors removed")
    hits = search(stub, collection, "lighthouses and the sea", top_k=5)
    assert [(h.chunk_id, h.text) for h in hits] == [("d#0", TEXTS["grpc"])]


def test_deletes_take_their_vectors(
    stub: Stub, collection: str, vectors: vpb_grpc.VectorServiceStub
) -> None:
    upsert(stub, collection, *(doc(k, v, topic=k) for k, v in TEXTS.items()))
    name = vector_name(stub, collection)
    assert vector_count(vectors, name) == 3
    deleted = stub.DeleteDocuments(pb.DeleteDocumentsRequest(collection=collection, ids=["cats"]))
    assert deleted.deleted_count == 1 and vector_count(vectors, name) == 2
    stub.DeleteDocuments(
        pb.DeleteDocumentsRequest(collection=collection, filter=equals("topic", "grpc"))
    )
    assert vector_count(vectors, name) == 1
    assert [h.document_id for h in search(stub, collection, "cats and gRPC", top_k=5)] == ["sqlite"]
    stub.DeleteCollection(pb.DeleteCollectionRequest(name=collection))
    with pytest.raises(grpc.RpcError) as info:
        vectors.Count(vpb.CountRequest(collection=name))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]


def test_a_document_created_again_keeps_its_new_vectors(
    stub: Stub, collection: str, vectors: vpb_grpc.VectorServiceStub
) -> None:
    """Delete then re-create under the same id: the pending deletion of the
    old incarnation must not remove the new one's vectors."""
    upsert(stub, collection, doc("x", TEXTS["cats"]))
    stub.DeleteDocuments(pb.DeleteDocumentsRequest(collection=collection, ids=["x"]))
    upsert(stub, collection, doc("x", TEXTS["sqlite"]))
    assert vector_count(vectors, vector_name(stub, collection)) == 1
    assert [h.text for h in search(stub, collection, "cats", top_k=1)] == [TEXTS["sqlite"]]


def test_search_rejects_bad_input(stub: Stub, collection: str) -> None:
    for request, field in [
        (pb.SearchRequest(collection=collection, query="  "), "query"),
        (pb.SearchRequest(collection=collection, query="q", top_k=-1), "top_k"),
        (pb.SearchRequest(collection=collection, query="q", top_k=1000), "top_k"),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            stub.Search(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert field in info.value.details()  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as info:
        stub.Search(pb.SearchRequest(collection="missing-one", query="q"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    assert search(stub, collection, "nothing indexed yet") == []


def test_reconcile_finds_and_repairs_drift(
    stub: Stub, collection: str, vectors: vpb_grpc.VectorServiceStub
) -> None:
    upsert(stub, collection, *(doc(k, v, topic=k) for k, v in TEXTS.items()))
    name = vector_name(stub, collection)
    # Drift made behind the metadata service's back: a vector lost, two
    # vectors nobody owns (one of an unknown document, one not even ours).
    vectors.Delete(vpb.DeleteRequest(collection=name, ids=["grpc#0"]))
    vectors.Upsert(
        vpb.UpsertRequest(
            collection=name,
            records=[
                vpb.VectorRecord(
                    id="ghost#0",
                    text="a ghost",
                    metadata=metadata_to_proto({"_doc": "ghost", "_inc": 7, "_hash": "00"}),
                ),
                vpb.VectorRecord(id="stranger", text="not from the metadata service"),
            ],
        )
    )
    dry = stub.Reconcile(pb.ReconcileRequest(collection=collection, dry_run=True), timeout=120)
    assert (dry.missing_vectors, dry.orphan_vectors, dry.dry_run) == (1, 2, True)
    assert vector_count(vectors, name) == 4  # a dry run changes nothing
    fixed = stub.Reconcile(pb.ReconcileRequest(collection=collection), timeout=120)
    assert (fixed.missing_vectors, fixed.orphan_vectors) == (1, 2)
    assert vector_count(vectors, name) == 3
    again = stub.Reconcile(pb.ReconcileRequest(collection=collection, dry_run=True), timeout=120)
    assert (again.missing_vectors, again.orphan_vectors, again.stale_vectors) == (0, 0, 0)
    assert again.pending_resumed == 0
    assert [h.document_id for h in search(stub, collection, "HTTP/2 streams", top_k=1)] == ["grpc"]


def test_work_stored_while_the_vector_service_is_away_is_indexed_on_start(
    paired_settings: MetadataSettings, vectors: vpb_grpc.VectorServiceStub, tmp_path: Path
) -> None:
    """Writes and deletes while the vector service cannot be reached stay
    recorded (PENDING, deletion outbox) and are carried out, without any
    manual step, by the next start that can reach it."""
    prepare_database(paired_settings)
    away = paired_settings.model_copy(update={"vector_service_address": "127.0.0.1:1"})
    with RunningServer.metadata(paired_settings) as up, grpc.insecure_channel(up.address) as ch:
        stub = Stub(ch)
        stub.CreateCollection(pb.CreateCollectionRequest(name="outage"))
        upsert(stub, "outage", doc("kept", TEXTS["sqlite"]), doc("gone", TEXTS["cats"]))
        name = vector_name(stub, "outage")
    assert vector_count(vectors, name) == 2
    with RunningServer.metadata(away) as down, grpc.insecure_channel(down.address) as ch:
        stub = Stub(ch)
        states = upsert(stub, "outage", doc("new", TEXTS["grpc"]))
        assert states == [("new", pb.UPSERT_STATE_PENDING)]
        stub.DeleteDocuments(pb.DeleteDocumentsRequest(collection="outage", ids=["gone"]))
        with pytest.raises(grpc.RpcError) as info:
            stub.Search(pb.SearchRequest(collection="outage", query="q", mode=pb.SEARCH_MODE_DENSE))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        # HYBRID answers from the keyword index, which already has the new
        # document and no longer the deleted one.
        answer = stub.Search(pb.SearchRequest(collection="outage", query="gRPC streams cats"))
        assert answer.degraded and "unavailable" in answer.degraded_reason
        assert [h.document_id for h in answer.hits] == ["new"]
    assert vector_count(vectors, name) == 2  # nothing reached the index
    with RunningServer.metadata(paired_settings) as back, grpc.insecure_channel(back.address) as ch:
        stub = Stub(ch)

        def settled() -> bool:
            listed = stub.ListDocuments(pb.ListDocumentsRequest(collection="outage"))
            return {d.state for d in listed.documents} == {pb.DOCUMENT_STATE_INDEXED}

        eventually(settled, what="PENDING work indexed after the restart")
        eventually(lambda: vector_count(vectors, name) == 2, what="the deleted vector removed")
        hits = search(stub, "outage", "cats hunting at dawn", top_k=5)
        assert sorted(h.document_id for h in hits) == ["kept", "new"]


def test_per_item_results_of_the_ingest_stream(stub: Stub, collection: str) -> None:
    requests = [
        pb.IngestDocumentsRequest(
            collection=collection, documents=[doc("a", TEXTS["cats"]), doc("", "no id")]
        ),
        pb.IngestDocumentsRequest(collection=collection, documents=[doc("a", TEXTS["cats"])]),
    ]
    responses = list(stub.IngestDocuments(iter(requests), timeout=120))
    assert [[(r.id, r.state) for r in resp.results] for resp in responses] == [
        [("a", pb.UPSERT_STATE_INDEXED), ("", pb.UPSERT_STATE_FAILED)],
        [("a", pb.UPSERT_STATE_UNCHANGED)],
    ]
    assert responses[0].results[1].status.code == code_pb2.INVALID_ARGUMENT


def test_metadata_changes_and_replays_embed_nothing(
    stub: Stub, collection: str, vector_server: RunningServer
) -> None:
    """A metadata-only change updates the vectors' metadata (filters see it)
    with the stored vectors: the model sees no text."""
    upsert(stub, collection, *(doc(k, v, topic=k, year=2020) for k, v in TEXTS.items()))
    embedded = vector_server.server.batcher.stats.texts
    changed = upsert(stub, collection, doc("cats", TEXTS["cats"], topic="cats", year=2024))
    assert changed == [("cats", pb.UPSERT_STATE_INDEXED)]
    assert vector_server.server.batcher.stats.texts == embedded
    newer = common.Filter(
        condition=common.Condition(
            key="year", op=common.OPERATOR_GT, value=common.MetadataValue(int_value=2022)
        )
    )
    hits = search(stub, collection, "animals", top_k=3, filter=newer)
    assert [(h.document_id, h.metadata["year"].int_value) for h in hits] == [("cats", 2024)]


def test_reconcile_rebuilds_a_lost_vector_collection(
    stub: Stub, collection: str, vectors: vpb_grpc.VectorServiceStub
) -> None:
    """Chroma is rebuildable: the database is the source of truth."""
    upsert(stub, collection, *(doc(k, v, topic=k) for k, v in TEXTS.items()))
    name = vector_name(stub, collection)
    vectors.DropCollection(vpb.DropCollectionRequest(name=name))
    fixed = stub.Reconcile(pb.ReconcileRequest(collection=collection), timeout=120)
    assert (fixed.missing_vectors, fixed.orphan_vectors) == (3, 0)
    eventually(lambda: vector_count(vectors, name) == 3, what="the vectors rebuilt")
    hits = search(stub, collection, "Which database allows concurrent readers?", top_k=1)
    assert [h.document_id for h in hits] == ["sqlite"]
