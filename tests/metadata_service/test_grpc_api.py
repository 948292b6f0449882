"""The MetadataService over a real socket: every RPC, every listed piece of bad
input (clear status, nothing already stored lost), health and streams."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from sqlalchemy import create_engine, text

from askmojo.common.filters import metadata_to_proto
from askmojo.common.v1 import common_pb2 as common
from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from metadata_service.config import MetadataSettings
from metadata_service.errors import DeadlineExceeded, check_deadline, to_rpc_status
from metadata_service.server import prepare_database
from tests.conftest import RunningServer

Stub = pb_grpc.MetadataServiceStub


def document(doc_id: str, text: str = "A short document.", **metadata: object) -> pb.Document:
    values = metadata_to_proto(metadata)  # type: ignore[arg-type]
    return pb.Document(id=doc_id, text=text, metadata=values)


def upsert(stub: Stub, *docs: pb.Document, collection: str = "docs") -> pb.UpsertDocumentsResponse:
    return stub.UpsertDocuments(pb.UpsertDocumentsRequest(collection=collection, documents=docs))


def field_violations(status_details: list) -> list[str]:  # type: ignore[type-arg]
    fields = []
    for detail in status_details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            fields += [v.field for v in bad_request.field_violations]
    return fields


def rpc_error(call: object) -> tuple[grpc.StatusCode, str, list[str]]:
    """Runs `call`, expecting it to fail; returns (code, message, violated fields)."""
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    error = info.value
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    fields = field_violations(list(status.details)) if status else []
    return error.code(), error.details(), fields  # type: ignore[attr-defined]


@pytest.fixture
def docs_stub(stub: Stub) -> Iterator[Stub]:
    """A collection "docs" holding one document, "keep", that no bad request
    may disturb."""
    stub.CreateCollection(pb.CreateCollectionRequest(name="docs"))
    upsert(stub, document("keep", "Already stored.", year=2020))
    yield stub
    kept = stub.GetDocument(pb.GetDocumentRequest(collection="docs", id="keep"))
    assert kept.text == "Already stored."
    assert kept.metadata["year"].int_value == 2020


def test_happy_path(docs_stub: Stub) -> None:
    collection = docs_stub.GetCollection(pb.GetCollectionRequest(name="docs"))
    assert (collection.model, collection.dimension, collection.document_count) == (
        "all-MiniLM-L6-v2",
        384,
        1,
    )
    response = upsert(docs_stub, document("b", "Text " * 400, lang="en"))
    result = response.results[0]
    assert (result.id, result.state, result.status.code) == ("b", pb.UPSERT_STATE_PENDING, 0)
    assert result.chunk_count > 1
    again = upsert(docs_stub, document("b", "Text " * 400, lang="en"))
    assert again.results[0].state == pb.UPSERT_STATE_UNCHANGED

    listed = docs_stub.ListDocuments(pb.ListDocumentsRequest(collection="docs"))
    assert [d.id for d in listed.documents] == ["b", "keep"]
    assert all(d.text == "" and d.state == pb.DOCUMENT_STATE_PENDING for d in listed.documents)
    full = docs_stub.ListDocuments(
        pb.ListDocumentsRequest(collection="docs", view=pb.DOCUMENT_VIEW_FULL, page_size=1)
    )
    assert full.documents[0].text == "Text " * 400 and full.next_page_token

    stats = docs_stub.GetStats(pb.GetStatsRequest())
    assert stats.database.journal_mode == "wal" and stats.pool.size >= 5
    # The collection and the two documents: three writes, each committed.
    assert stats.database.writes >= 3 and stats.database.write_transactions >= 1
    assert {s.state: s.count for s in stats.documents_by_state}[pb.DOCUMENT_STATE_PENDING] == 2

    deleted = docs_stub.DeleteDocuments(pb.DeleteDocumentsRequest(collection="docs", ids=["b"]))
    assert deleted.deleted_count == 1
    collections = docs_stub.ListCollections(pb.ListCollectionsRequest())
    assert [c.name for c in collections.collections] == ["docs"]


def test_one_bad_document_gets_its_own_status(docs_stub: Stub) -> None:
    response = upsert(
        docs_stub,
        document("ok-1"),
        document("bad", **{"no spaces": 1}),
        document("ok-2"),
    )
    codes = [(r.id, r.state, r.status.code) for r in response.results]
    assert codes == [
        ("ok-1", pb.UPSERT_STATE_PENDING, code_pb2.OK),
        ("bad", pb.UPSERT_STATE_FAILED, code_pb2.INVALID_ARGUMENT),
        ("ok-2", pb.UPSERT_STATE_PENDING, code_pb2.OK),
    ]
    assert field_violations(list(response.results[1].status.details)) == [
        "documents[1].metadata['no spaces']"
    ]
    listed = docs_stub.ListDocuments(pb.ListDocumentsRequest(collection="docs"))
    assert [d.id for d in listed.documents] == ["keep", "ok-1", "ok-2"]


@pytest.mark.parametrize(
    ("bad", "field", "words"),
    [
        (document(""), "documents[0].id", "must not be empty"),
        (document("x" * 513), "documents[0].id", "limit is 512"),
        (document("tab\tid"), "documents[0].id", "control characters"),
        (document("big", "x" * (1024 * 1024 + 1)), "documents[0].text", "limit is 1048576"),
        (document("blank", "   \n "), "documents[0].text", "empty"),
        (
            document("many", **{f"k{i}": i for i in range(33)}),
            "documents[0].metadata",
            "limit is 32",
        ),
        (document("slash", **{"a/b": 1}), "documents[0].metadata['a/b']", "A-Z a-z 0-9"),
        (document("reserved", _internal=1), "documents[0].metadata['_internal']", "reserved"),
        (
            pb.Document(id="unset", text="t", metadata={"k": common.MetadataValue()}),
            "documents[0].metadata['k']",
            "set one of",
        ),
        (document("nan", score=float("nan")), "documents[0].metadata['score']", "finite"),
    ],
)
def test_invalid_documents(docs_stub: Stub, bad: pb.Document, field: str, words: str) -> None:
    result = upsert(docs_stub, bad).results[0]
    assert result.state == pb.UPSERT_STATE_FAILED
    assert result.status.code == code_pb2.INVALID_ARGUMENT
    assert words in result.status.message
    assert field_violations(list(result.status.details)) == [field]


def test_batch_level_errors(docs_stub: Stub, settings: MetadataSettings) -> None:
    code, message, fields = rpc_error(lambda: upsert(docs_stub))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["documents"])
    assert "empty" in message

    too_many = [document(f"d{i}") for i in range(settings.max_batch_documents + 1)]
    code, message, fields = rpc_error(lambda: upsert(docs_stub, *too_many))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["documents"])
    assert "split the batch" in message

    code, message, _ = rpc_error(lambda: upsert(docs_stub, document("a"), collection="nope"))
    assert code == grpc.StatusCode.NOT_FOUND and "'nope'" in message
    # Nothing of the refused batches was stored.
    assert docs_stub.GetCollection(pb.GetCollectionRequest(name="docs")).document_count == 1


def test_collection_errors(docs_stub: Stub) -> None:
    code, message, _ = rpc_error(
        lambda: docs_stub.CreateCollection(pb.CreateCollectionRequest(name="docs"))
    )
    assert code == grpc.StatusCode.ALREADY_EXISTS and "already exists" in message
    code, message, fields = rpc_error(
        lambda: docs_stub.CreateCollection(pb.CreateCollectionRequest(name="x"))
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["name"])
    assert "3 to 63 characters" in message
    code, _, fields = rpc_error(
        lambda: docs_stub.CreateCollection(
            pb.CreateCollectionRequest(
                name="chunky", chunking=pb.ChunkingConfig(chunk_size=100, chunk_overlap=100)
            )
        )
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["chunking.chunk_overlap"])
    code, _, _ = rpc_error(
        lambda: docs_stub.CreateCollection(pb.CreateCollectionRequest(name="dims", dimension=768))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    code, _, _ = rpc_error(lambda: docs_stub.GetCollection(pb.GetCollectionRequest(name="nope")))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _, _ = rpc_error(
        lambda: docs_stub.DeleteCollection(pb.DeleteCollectionRequest(name="nope"))
    )
    assert code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("name", ["", "w"])
def test_collection_name_violations_name_the_request_field(
    docs_stub: Stub, settings: MetadataSettings, name: str
) -> None:
    """GetCollection/DeleteCollection carry the name in `name`; Search and
    Reconcile in `collection`: the field violation names that field."""
    for call in (
        lambda: docs_stub.GetCollection(pb.GetCollectionRequest(name=name)),
        lambda: docs_stub.DeleteCollection(pb.DeleteCollectionRequest(name=name)),
    ):
        code, _, fields = rpc_error(call)
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["name"])
    # Search and Reconcile look the collection up before they need the
    # vector service, so an address nothing listens on will do.
    away = settings.model_copy(update={"vector_service_address": "127.0.0.1:1"})
    with RunningServer.metadata(away) as server, grpc.insecure_channel(server.address) as channel:
        stub = Stub(channel)
        for call in (
            lambda: stub.Search(pb.SearchRequest(collection=name, query="fuzz"), timeout=30),
            lambda: stub.Reconcile(pb.ReconcileRequest(collection=name), timeout=30),
            lambda: stub.ListDocuments(pb.ListDocumentsRequest(collection=name)),
        ):
            code, _, fields = rpc_error(call)
            assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["collection"])


def test_list_errors(docs_stub: Stub) -> None:
    code, message, fields = rpc_error(
        lambda: docs_stub.ListDocuments(
            pb.ListDocumentsRequest(collection="docs", page_token="%%%garbage")
        )
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"])
    assert message.startswith("page_token is not valid for this query")

    string_gt = common.Filter(
        condition=common.Condition(
            key="year", op=common.OPERATOR_GT, value=common.MetadataValue(string_value="2020")
        )
    )
    code, message, fields = rpc_error(
        lambda: docs_stub.ListDocuments(
            pb.ListDocumentsRequest(collection="docs", filter=string_gt)
        )
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["filter.condition.value"])
    assert "numbers only" in message

    code, _, fields = rpc_error(
        lambda: docs_stub.ListDocuments(pb.ListDocumentsRequest(collection="docs", page_size=-1))
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_size"])
    code, _, _ = rpc_error(
        lambda: docs_stub.GetDocument(pb.GetDocumentRequest(collection="docs", id="nope"))
    )
    assert code == grpc.StatusCode.NOT_FOUND


def test_filters_over_the_wire(docs_stub: Stub) -> None:
    upsert(docs_stub, document("old", year=1999), document("new", year=2024.5))
    newer = common.Filter(
        condition=common.Condition(
            key="year", op=common.OPERATOR_GTE, value=common.MetadataValue(int_value=2020)
        )
    )
    listed = docs_stub.ListDocuments(pb.ListDocumentsRequest(collection="docs", filter=newer))
    assert [d.id for d in listed.documents] == ["keep", "new"]
    older = common.Filter(
        condition=common.Condition(
            key="year", op=common.OPERATOR_LT, value=common.MetadataValue(int_value=2000)
        )
    )
    deleted = docs_stub.DeleteDocuments(pb.DeleteDocumentsRequest(collection="docs", filter=older))
    assert deleted.deleted_count == 1
    listed = docs_stub.ListDocuments(pb.ListDocumentsRequest(collection="docs"))
    assert [d.id for d in listed.documents] == ["keep", "new"]


def test_delete_documents_errors(docs_stub: Stub) -> None:
    code, message, _ = rpc_error(
        lambda: docs_stub.DeleteDocuments(pb.DeleteDocumentsRequest(collection="docs"))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "exactly one" in message


def test_message_over_the_size_limit(settings: MetadataSettings) -> None:
    small = settings.model_copy(update={"max_message_bytes": 64 * 1024})
    prepare_database(small)
    with RunningServer.metadata(small) as server, grpc.insecure_channel(server.address) as channel:
        stub = Stub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(name="docs"))
        code, message, _ = rpc_error(lambda: upsert(stub, document("big", "x" * 100_000)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in message
        assert stub.GetCollection(pb.GetCollectionRequest(name="docs")).document_count == 0


def test_ingest_stream_survives_bad_batches(docs_stub: Stub) -> None:
    requests = [
        pb.IngestDocumentsRequest(collection="docs", documents=[document("s1"), document("")]),
        pb.IngestDocumentsRequest(collection="missing", documents=[document("s2")]),
        pb.IngestDocumentsRequest(collection="docs", documents=[]),
        pb.IngestDocumentsRequest(collection="docs", documents=[document("s3")]),
    ]
    responses = list(docs_stub.IngestDocuments(iter(requests)))
    assert [[(r.id, r.status.code) for r in resp.results] for resp in responses] == [
        [("s1", code_pb2.OK), ("", code_pb2.INVALID_ARGUMENT)],
        [("s2", code_pb2.NOT_FOUND)],
        [],
        [("s3", code_pb2.OK)],
    ]
    # A refused batch says why in its own status; the empty one has no
    # documents to carry it.
    assert [resp.status.code for resp in responses] == [
        code_pb2.OK,
        code_pb2.NOT_FOUND,
        code_pb2.INVALID_ARGUMENT,
        code_pb2.OK,
    ]
    assert "missing" in responses[1].status.message
    listed = docs_stub.ListDocuments(pb.ListDocumentsRequest(collection="docs"))
    assert [d.id for d in listed.documents] == ["keep", "s1", "s3"]


def test_search_without_a_vector_service_says_so(docs_stub: Stub) -> None:
    code, message, _ = rpc_error(
        lambda: docs_stub.Search(
            pb.SearchRequest(collection="docs", query="q", mode=pb.SEARCH_MODE_DENSE)
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "VECTOR_SERVICE_ADDRESS" in message
    # HYBRID (the default) answers from the keyword index and says so.
    answer = docs_stub.Search(pb.SearchRequest(collection="docs", query="q"))
    assert answer.degraded and "VECTOR_SERVICE_ADDRESS" in answer.degraded_reason


def test_server_refuses_work_whose_deadline_passed() -> None:
    """check_deadline, as the servicer calls it before starting any work."""

    class ExpiredContext:
        def time_remaining(self) -> float:
            return -0.5

    with pytest.raises(DeadlineExceeded):
        check_deadline(ExpiredContext())  # type: ignore[arg-type]
    assert to_rpc_status(DeadlineExceeded("late")).code == code_pb2.DEADLINE_EXCEEDED


def test_expired_deadline_is_deadline_exceeded(docs_stub: Stub) -> None:
    code, _, _ = rpc_error(
        lambda: docs_stub.ListDocuments(pb.ListDocumentsRequest(collection="docs"), timeout=1e-6)
    )
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_health_tracks_database_readiness(settings: MetadataSettings) -> None:
    # Not migrated: the server runs but must not claim readiness.
    with (
        RunningServer.metadata(settings) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "askmojo.metadata.v1.MetadataService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        prepare_database(settings)
        watch = health.Watch(
            health_pb2.HealthCheckRequest(service="askmojo.metadata.v1.MetadataService"),
            timeout=10,
        )
        for reply in watch:
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                watch.cancel()
                break


def test_unexpected_errors_are_internal_with_a_reference(stub: Stub, server: RunningServer) -> None:
    stub.CreateCollection(pb.CreateCollectionRequest(name="docs"))
    upsert(stub, document("a", tag="x"))
    # Break the schema under the running server: a real database error.
    engine = create_engine(server.settings.database_url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE document_metadata"))
        conn.execute(text("CREATE TABLE document_metadata (x INTEGER)"))
    engine.dispose()
    code, message, _ = rpc_error(
        lambda: stub.GetDocument(pb.GetDocumentRequest(collection="docs", id="a"))
    )
    # A broken schema is our fault, not an outage to retry: INTERNAL, with a
    # reference to the logged traceback and no traceback on the wire.
    assert code == grpc.StatusCode.INTERNAL
    assert "ref " in message and "see the server log" in message
    assert "Traceback" not in message and "File " not in message


def test_lock_held_past_the_timeout_is_unavailable(settings: MetadataSettings) -> None:
    impatient = settings.model_copy(update={"sqlite_timeout": 0.3})
    prepare_database(impatient)
    with (
        RunningServer.metadata(impatient) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = Stub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(name="docs"))
        path = impatient.database_url.removeprefix("sqlite:///")
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process's long write
        try:
            code, message, _ = rpc_error(lambda: upsert(stub, document("a")))
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert code == grpc.StatusCode.UNAVAILABLE and "database is locked" in message
        assert upsert(stub, document("a")).results[0].status.code == code_pb2.OK
