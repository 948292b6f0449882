"""Proto <-> domain mappings of the metadata service, without a server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.rpc import code_pb2, error_details_pb2

from askmojo.common.filters import AllOf, Condition, Op, metadata_value_from_proto
from askmojo.common.v1 import common_pb2
from askmojo.metadata.v1 import metadata_service_pb2 as pb
from metadata_service import convert
from metadata_service.domain import (
    ChunkingSpec,
    CollectionInfo,
    CollectionSpec,
    DeleteCollectionOutcome,
    DeleteDocumentsOutcome,
    DocumentInfo,
    DocumentInput,
    IndexState,
    Page,
    PoolStatus,
    Stats,
    StorageStatus,
    UpsertOutcome,
    UpsertState,
)
from metadata_service.errors import InvalidArgument, NotFound, to_rpc_status

CREATED = datetime(2024, 1, 2, 3, 4, 5, 678_901, tzinfo=UTC)
UPDATED = datetime(2024, 6, 7, 8, 9, 10, tzinfo=UTC)
METADATA = {"title": "Über 漢字", "year": 2024, "big": -(2**63), "score": 0.25, "draft": False}


def document_info(**changes: object) -> DocumentInfo:
    fields: dict[str, object] = {
        "id": "doc-1",
        "text": "Hello world.",
        "metadata": METADATA,
        "state": IndexState.INDEXED,
        "content_hash": "ab" * 32,
        "generation": 3,
        "chunk_count": 2,
        "error": None,
        "created_at": CREATED,
        "updated_at": UPDATED,
    }
    fields.update(changes)
    return DocumentInfo(**fields)  # type: ignore[arg-type]


def collection_info(**changes: object) -> CollectionInfo:
    fields: dict[str, object] = {
        "name": "papers",
        "description": "Research papers",
        "model": "all-MiniLM-L6-v2",
        "dimension": 384,
        "chunking": ChunkingSpec(800, 100),
        "document_count": 12,
        "chunk_count": 40,
        "created_at": CREATED,
    }
    fields.update(changes)
    return CollectionInfo(**fields)  # type: ignore[arg-type]


def proto_metadata(document: pb.Document) -> dict[str, object]:
    return {k: metadata_value_from_proto(v) for k, v in document.metadata.items()}


# --- timestamps --------------------------------------------------------------


def test_timestamp_keeps_microseconds() -> None:
    stamp = convert.to_proto_timestamp(CREATED)
    assert stamp.ToDatetime(tzinfo=UTC) == CREATED
    assert stamp.nanos == 678_901_000


def test_timestamp_of_other_zone_is_the_same_instant() -> None:
    local = CREATED.astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert convert.to_proto_timestamp(local) == convert.to_proto_timestamp(CREATED)


def test_naive_timestamp_is_read_as_utc() -> None:
    naive = CREATED.replace(tzinfo=None)
    assert convert.to_proto_timestamp(naive) == convert.to_proto_timestamp(CREATED)


# --- collections -------------------------------------------------------------


def test_from_proto_create_collection() -> None:
    request = pb.CreateCollectionRequest(
        name="papers",
        description="d",
        model="m",
        dimension=16,
        chunking=pb.ChunkingConfig(chunk_size=500, chunk_overlap=50),
    )
    assert convert.from_proto_create_collection(request) == CollectionSpec(
        name="papers", description="d", model="m", dimension=16, chunk_size=500, chunk_overlap=50
    )


def test_from_proto_create_collection_leaves_defaults_as_zero() -> None:
    spec = convert.from_proto_create_collection(pb.CreateCollectionRequest(name="papers"))
    assert spec == CollectionSpec(name="papers")


def test_to_proto_collection() -> None:
    proto = convert.to_proto_collection(collection_info())
    assert proto.name == "papers"
    assert proto.description == "Research papers"
    assert proto.model == "all-MiniLM-L6-v2"
    assert proto.dimension == 384
    assert proto.document_count == 12
    assert proto.chunk_count == 40
    assert (proto.chunking.chunk_size, proto.chunking.chunk_overlap) == (800, 100)
    assert proto.create_time.ToDatetime(tzinfo=UTC) == CREATED


def test_to_proto_list_collections() -> None:
    page = Page([collection_info(name="a"), collection_info(name="b")], next_page_token="tok")
    proto = convert.to_proto_list_collections(page)
    assert [c.name for c in proto.collections] == ["a", "b"]
    assert proto.next_page_token == "tok"
    assert convert.to_proto_list_collections(Page([])) == pb.ListCollectionsResponse()


def test_to_proto_delete_collection() -> None:
    proto = convert.to_proto_delete_collection(DeleteCollectionOutcome(4, 9))
    assert (proto.deleted_documents, proto.deleted_chunks) == (4, 9)


# --- documents in ------------------------------------------------------------


def test_from_proto_document_keeps_every_metadata_kind() -> None:
    document = pb.Document(
        id="doc-1",
        text="Some text",
        metadata={
            "s": common_pb2.MetadataValue(string_value="x"),
            "empty": common_pb2.MetadataValue(string_value=""),
            "i": common_pb2.MetadataValue(int_value=-5),
            "zero": common_pb2.MetadataValue(int_value=0),
            "d": common_pb2.MetadataValue(double_value=1.5),
            "t": common_pb2.MetadataValue(bool_value=True),
            "f": common_pb2.MetadataValue(bool_value=False),
        },
    )
    result = convert.from_proto_document(document)
    assert result == DocumentInput(
        id="doc-1",
        text="Some text",
        metadata={"s": "x", "empty": "", "i": -5, "zero": 0, "d": 1.5, "t": True, "f": False},
    )
    assert result.metadata["t"] is True
    assert result.metadata["f"] is False
    assert type(result.metadata["zero"]) is int
    assert type(result.metadata["d"]) is float


def test_from_proto_document_passes_unset_values_on_as_none() -> None:
    # Validation, not conversion, rejects them, so a batch fails item by item.
    document = pb.Document(id="x", text="t", metadata={"k": common_pb2.MetadataValue()})
    assert convert.from_proto_document(document).metadata == {"k": None}


def test_from_proto_document_does_not_validate() -> None:
    assert convert.from_proto_document(pb.Document()) == DocumentInput(id="", text="", metadata={})


def test_from_proto_documents_keeps_order() -> None:
    documents = [pb.Document(id=str(i), text=f"t{i}") for i in range(5)]
    assert [d.id for d in convert.from_proto_documents(documents)] == ["0", "1", "2", "3", "4"]
    assert convert.from_proto_documents([]) == []


def test_document_survives_a_round_trip_through_the_wire() -> None:
    proto = convert.to_proto_document(document_info())
    back = convert.from_proto_document(pb.Document.FromString(proto.SerializeToString()))
    assert back == DocumentInput(id="doc-1", text="Hello world.", metadata=METADATA)
    assert back.metadata["draft"] is False


# --- documents out -----------------------------------------------------------


def test_to_proto_document_full() -> None:
    proto = convert.to_proto_document(document_info())
    assert proto.id == "doc-1"
    assert proto.text == "Hello world."
    assert proto_metadata(proto) == METADATA
    assert proto.metadata["draft"].WhichOneof("kind") == "bool_value"
    assert proto.metadata["year"].WhichOneof("kind") == "int_value"
    assert proto.metadata["score"].WhichOneof("kind") == "double_value"
    assert proto.state == pb.DOCUMENT_STATE_INDEXED
    assert proto.content_hash == "ab" * 32
    assert proto.generation == 3
    assert proto.chunk_count == 2
    assert proto.error == ""
    assert proto.create_time.ToDatetime(tzinfo=UTC) == CREATED
    assert proto.update_time.ToDatetime(tzinfo=UTC) == UPDATED


def test_to_proto_document_omits_text_when_not_loaded() -> None:
    proto = convert.to_proto_document(document_info(text=None))
    assert proto.text == ""
    assert "text" not in {field.name for field, _ in proto.ListFields()}
    # Everything else is still there.
    assert proto.id == "doc-1"
    assert proto_metadata(proto) == METADATA


def test_to_proto_document_includes_text_when_loaded() -> None:
    proto = convert.to_proto_document(document_info(text="Full text 漢字 😀"))
    assert proto.text == "Full text 漢字 😀"
    assert "text" in {field.name for field, _ in proto.ListFields()}


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (IndexState.PENDING, pb.DOCUMENT_STATE_PENDING),
        (IndexState.INDEXED, pb.DOCUMENT_STATE_INDEXED),
        (IndexState.FAILED, pb.DOCUMENT_STATE_FAILED),
    ],
)
def test_to_proto_document_state(state: IndexState, expected: int) -> None:
    assert convert.to_proto_document(document_info(state=state)).state == expected


def test_to_proto_document_error() -> None:
    proto = convert.to_proto_document(
        document_info(state=IndexState.FAILED, error="vector service unavailable")
    )
    assert proto.error == "vector service unavailable"


def test_to_proto_document_without_metadata() -> None:
    assert len(convert.to_proto_document(document_info(metadata={})).metadata) == 0


def test_to_proto_list_documents() -> None:
    page = Page([document_info(id="a"), document_info(id="b", text=None)], next_page_token="n")
    proto = convert.to_proto_list_documents(page)
    assert [d.id for d in proto.documents] == ["a", "b"]
    assert [d.text for d in proto.documents] == ["Hello world.", ""]
    assert proto.next_page_token == "n"


def test_to_proto_delete_documents() -> None:
    proto = convert.to_proto_delete_documents(DeleteDocumentsOutcome(2, ("x", "y")))
    assert proto.deleted_count == 2
    assert list(proto.not_found_ids) == ["x", "y"]
    assert list(convert.to_proto_delete_documents(DeleteDocumentsOutcome(0)).not_found_ids) == []


# --- upsert results ----------------------------------------------------------


def upsert_result(outcome: UpsertOutcome) -> pb.UpsertResult:
    """One outcome through the mapping the servicer uses."""
    return convert.to_proto_upsert_results([outcome], to_rpc_status)[0]


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (UpsertState.PENDING, pb.UPSERT_STATE_PENDING),
        (UpsertState.INDEXED, pb.UPSERT_STATE_INDEXED),
        (UpsertState.UNCHANGED, pb.UPSERT_STATE_UNCHANGED),
        (UpsertState.FAILED, pb.UPSERT_STATE_FAILED),
    ],
)
def test_upsert_result_success(state: UpsertState, expected: int) -> None:
    result = upsert_result(UpsertOutcome("doc", state, None, 4, 7))
    assert result.id == "doc"
    assert result.state == expected
    assert result.status.code == code_pb2.OK == 0
    assert result.status.message == ""
    assert len(result.status.details) == 0
    assert (result.chunk_count, result.generation) == (4, 7)


def test_upsert_result_invalid_argument_carries_bad_request() -> None:
    error = InvalidArgument("documents[2].metadata.k", "key is reserved")
    result = upsert_result(UpsertOutcome("doc", UpsertState.FAILED, error))
    assert result.state == pb.UPSERT_STATE_FAILED
    assert result.status.code == code_pb2.INVALID_ARGUMENT == 3
    assert "key is reserved" in result.status.message
    assert len(result.status.details) == 1
    bad_request = error_details_pb2.BadRequest()
    assert result.status.details[0].Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("documents[2].metadata.k", "key is reserved")
    ]


def test_upsert_result_other_errors_keep_their_code() -> None:
    result = upsert_result(UpsertOutcome("doc", UpsertState.FAILED, NotFound("no collection 'x'")))
    assert result.status.code == code_pb2.NOT_FOUND
    assert result.status.message == "no collection 'x'"
    assert len(result.status.details) == 0


def test_upsert_results_keep_order() -> None:
    outcomes = [
        UpsertOutcome("a", UpsertState.PENDING),
        UpsertOutcome("b", UpsertState.FAILED, InvalidArgument("id", "empty")),
        UpsertOutcome("c", UpsertState.UNCHANGED),
    ]
    results = convert.to_proto_upsert_results(outcomes, to_rpc_status)
    assert [(r.id, r.status.code) for r in results] == [("a", 0), ("b", 3), ("c", 0)]


def test_ok_status_is_not_shared_mutable_state() -> None:
    first = upsert_result(UpsertOutcome("a", UpsertState.PENDING))
    first.status.message = "mutated"
    second = upsert_result(UpsertOutcome("b", UpsertState.PENDING))
    assert second.status.message == ""


# --- views, states, queries --------------------------------------------------


@pytest.mark.parametrize(
    ("view", "default_full", "expected"),
    [
        (pb.DOCUMENT_VIEW_UNSPECIFIED, True, True),
        (pb.DOCUMENT_VIEW_UNSPECIFIED, False, False),
        (pb.DOCUMENT_VIEW_BASIC, True, False),
        (pb.DOCUMENT_VIEW_BASIC, False, False),
        (pb.DOCUMENT_VIEW_FULL, True, True),
        (pb.DOCUMENT_VIEW_FULL, False, True),
    ],
)
def test_include_text(view: int, default_full: bool, expected: bool) -> None:
    assert convert.include_text(view, default_full) is expected


def test_from_proto_states() -> None:
    assert convert.from_proto_states([]) == frozenset()
    assert convert.from_proto_states(
        [pb.DOCUMENT_STATE_FAILED, pb.DOCUMENT_STATE_PENDING, pb.DOCUMENT_STATE_FAILED]
    ) == frozenset({IndexState.FAILED, IndexState.PENDING})
    assert convert.from_proto_states(
        [pb.DOCUMENT_STATE_PENDING, pb.DOCUMENT_STATE_INDEXED, pb.DOCUMENT_STATE_FAILED]
    ) == frozenset(IndexState)


@pytest.mark.parametrize(
    ("states", "field"),
    [
        ([pb.DOCUMENT_STATE_UNSPECIFIED], "states[0]"),
        ([pb.DOCUMENT_STATE_PENDING, pb.DOCUMENT_STATE_UNSPECIFIED], "states[1]"),
        ([pb.DOCUMENT_STATE_INDEXED, pb.DOCUMENT_STATE_INDEXED, 42], "states[2]"),
        ([-1], "states[0]"),
    ],
)
def test_from_proto_states_rejects_unknown_states(states: list[int], field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        convert.from_proto_states(states)
    assert [f for f, _ in info.value.violations] == [field]


def test_from_proto_filter_absent_is_none() -> None:
    # An unset filter field reads as an empty Filter; presence decides.
    assert convert.from_proto_filter(common_pb2.Filter(), present=False) is None


def test_from_proto_filter_present_but_empty_is_invalid() -> None:
    with pytest.raises(InvalidArgument) as info:
        convert.from_proto_filter(common_pb2.Filter(), present=True)
    assert [f for f, _ in info.value.violations] == ["filter"]


def test_from_proto_filter_errors_keep_their_field_path() -> None:
    bad = common_pb2.Filter(
        all=common_pb2.FilterList(
            filters=[
                common_pb2.Filter(
                    condition=common_pb2.Condition(
                        key="k",
                        op=common_pb2.OPERATOR_GT,
                        value=common_pb2.MetadataValue(string_value="x"),
                    )
                )
            ]
        )
    )
    with pytest.raises(InvalidArgument) as info:
        convert.from_proto_filter(bad, present=True)
    assert [f for f, _ in info.value.violations] == ["filter.all.filters[0].condition.value"]


def test_from_proto_list_documents_defaults() -> None:
    query = convert.from_proto_list_documents(pb.ListDocumentsRequest(collection="papers"))
    assert query.collection == "papers"
    assert query.filter is None
    assert query.states == frozenset()
    assert query.page_size == 0
    assert query.page_token == ""
    assert query.include_text is False  # ListDocuments defaults to BASIC


def test_from_proto_list_documents_full() -> None:
    condition = common_pb2.Condition(
        key="year", op=common_pb2.OPERATOR_GTE, value=common_pb2.MetadataValue(int_value=2020)
    )
    request = pb.ListDocumentsRequest(
        collection="papers",
        filter=common_pb2.Filter(all=common_pb2.FilterList(filters=[{"condition": condition}])),
        page_size=25,
        page_token="tok",
        states=[pb.DOCUMENT_STATE_FAILED],
        view=pb.DOCUMENT_VIEW_FULL,
    )
    query = convert.from_proto_list_documents(request)
    assert query.filter == AllOf((Condition("year", Op.GTE, (2020,)),))
    assert query.states == frozenset({IndexState.FAILED})
    assert (query.page_size, query.page_token, query.include_text) == (25, "tok", True)


def test_from_proto_list_documents_rejects_unspecified_state() -> None:
    request = pb.ListDocumentsRequest(collection="c", states=[pb.DOCUMENT_STATE_UNSPECIFIED])
    with pytest.raises(InvalidArgument) as info:
        convert.from_proto_list_documents(request)
    assert info.value.violations[0][0] == "states[0]"


# --- stats -------------------------------------------------------------------


def stats(**changes: object) -> Stats:
    fields: dict[str, object] = {
        "pool": PoolStatus("QueuePool", 5, 1, 4, 0, 10),
        "storage": StorageStatus("sqlite", 4096, 512, "wal", write_transactions=3, writes=7),
        "documents_by_state": {IndexState.INDEXED: 7},
        "chunk_count": 30,
        "worker_pid": 4242,
    }
    fields.update(changes)
    return Stats(**fields)  # type: ignore[arg-type]


def test_to_proto_stats() -> None:
    proto = convert.to_proto_stats(stats())
    assert proto.pool == pb.PoolStats(
        pool_class="QueuePool", size=5, checked_out=1, checked_in=4, overflow=0, max_overflow=10
    )
    assert proto.database == pb.DatabaseStats(
        dialect="sqlite",
        database_bytes=4096,
        wal_bytes=512,
        journal_mode="wal",
        write_transactions=3,
        writes=7,
    )
    assert proto.chunk_count == 30
    assert proto.worker_pid == 4242


def test_to_proto_stats_lists_every_state_with_zeros() -> None:
    proto = convert.to_proto_stats(stats())
    assert [(s.state, s.count) for s in proto.documents_by_state] == [
        (pb.DOCUMENT_STATE_PENDING, 0),
        (pb.DOCUMENT_STATE_INDEXED, 7),
        (pb.DOCUMENT_STATE_FAILED, 0),
    ]


def test_to_proto_stats_with_no_documents() -> None:
    proto = convert.to_proto_stats(stats(documents_by_state={}))
    assert len(proto.documents_by_state) == 3
    assert {s.state for s in proto.documents_by_state} == {
        pb.DOCUMENT_STATE_PENDING,
        pb.DOCUMENT_STATE_INDEXED,
        pb.DOCUMENT_STATE_FAILED,
    }
    assert all(s.count == 0 for s in proto.documents_by_state)


def test_to_proto_stats_with_every_state() -> None:
    counts = {IndexState.PENDING: 1, IndexState.INDEXED: 2, IndexState.FAILED: 3}
    proto = convert.to_proto_stats(stats(documents_by_state=counts))
    assert [s.count for s in proto.documents_by_state] == [1, 2, 3]
