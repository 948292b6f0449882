"""What a reply carries stays within what gRPC can send, over a real socket:
a ListDocuments page of large texts fits the message limit, errors echoing
huge input fit the trailers, and page tokens are signed."""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable, Iterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from askmojo.common.v1 import common_pb2 as common
from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from metadata_service.config import MetadataSettings
from metadata_service.paging import query_fingerprint
from metadata_service.server import prepare_database
from tests.conftest import RunningServer

Stub = pb_grpc.MetadataServiceStub
HUGE = "a" * 20_000
LIMIT = 4 * 1024 * 1024


def failure(call: Callable[[], object]) -> tuple[grpc.StatusCode, str, list[tuple[str, str]]]:
    """(code, message, field violations) of a call expected to fail."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    error = info.value
    status = rpc_status.from_call(error)
    violations = []
    for detail in status.details if status else []:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            violations += [(v.field, v.description) for v in bad_request.field_violations]
    return error.code(), error.details(), violations


@pytest.fixture
def small_stub(settings: MetadataSettings) -> Iterator[Stub]:
    """A server whose messages are capped at 4 MiB, with a collection "docs"."""
    small = settings.model_copy(update={"max_message_bytes": LIMIT})
    prepare_database(small)
    with (
        RunningServer.metadata(small) as server,
        grpc.insecure_channel(
            server.address,
            options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
        ) as channel,
    ):
        stub = Stub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(name="docs"))
        yield stub


# --- ListDocuments pages fit the message limit --------------------------------


def test_full_pages_of_large_documents_fit_the_message_limit(small_stub: Stub) -> None:
    """Twelve ~1 MiB documents, page_size 1000, view FULL: before, one reply
    of 12 MiB ("Sent message larger than max"); now pages of what fits."""
    text = "0123456789abcde\n" * (1024 * 1024 // 16 - 4)
    ids = [f"doc-{i:02d}" for i in range(12)]
    for doc_id in ids:  # one per call: a batch of them would not fit either
        small_stub.UpsertDocuments(
            pb.UpsertDocumentsRequest(
                collection="docs", documents=[pb.Document(id=doc_id, text=text)]
            )
        )
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = small_stub.ListDocuments(
            pb.ListDocumentsRequest(
                collection="docs",
                page_size=1000,
                page_token=token,
                view=pb.DOCUMENT_VIEW_FULL,
            )
        )
        pages += 1
        assert page.ByteSize() <= LIMIT
        assert all(d.text == text for d in page.documents)
        seen += [d.id for d in page.documents]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids
    assert pages == 4  # three ~1 MiB documents a page under 4 MiB


# --- page tokens are signed ------------------------------------------------------


def test_forged_page_token_is_invalid_argument(small_stub: Stub) -> None:
    """A token built as version 1 built them (base64 JSON, the fingerprint
    computable from the public code) was accepted; now nothing unsigned is."""
    for doc_id in ("a", "b", "c"):
        small_stub.UpsertDocuments(
            pb.UpsertDocumentsRequest(
                collection="docs", documents=[pb.Document(id=doc_id, text="text")]
            )
        )
    fingerprint = query_fingerprint("documents", "docs", None, [])
    payload = json.dumps({"v": 1, "k": "a", "q": fingerprint}, separators=(",", ":"))
    forged = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
    genuine = small_stub.ListDocuments(
        pb.ListDocumentsRequest(collection="docs", page_size=1)
    ).next_page_token
    tampered = genuine[:-3] + ("AAA" if genuine[-3:] != "AAA" else "BBB")
    for token in (forged, tampered, "garbage!", "A" * 5000):
        request = pb.ListDocumentsRequest(collection="docs", page_size=1, page_token=token)
        code, message, violations = failure(functools.partial(small_stub.ListDocuments, request))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert message.startswith("page_token is not valid for this query")
        assert [field for field, _ in violations] == ["page_token"]
    # Another query's token, too.
    code, message, _ = failure(
        lambda: small_stub.ListDocuments(
            pb.ListDocumentsRequest(
                collection="docs", page_token=genuine, states=[pb.DOCUMENT_STATE_PENDING]
            )
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not valid for this query" in message
    rest = small_stub.ListDocuments(pb.ListDocumentsRequest(collection="docs", page_token=genuine))
    assert [d.id for d in rest.documents] == ["b", "c"]


# --- echoed input fits the trailers ------------------------------------------------


def long_key_filter() -> common.Filter:
    return common.Filter(
        condition=common.Condition(
            key=HUGE, op=common.OPERATOR_EQ, value=common.MetadataValue(int_value=1)
        )
    )


ECHOING_CALLS: dict[str, tuple[Callable[[Stub], object], grpc.StatusCode]] = {
    "CreateCollection": (
        lambda s: s.CreateCollection(pb.CreateCollectionRequest(name=HUGE)),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "GetCollection": (
        lambda s: s.GetCollection(pb.GetCollectionRequest(name=HUGE)),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "DeleteCollection": (
        lambda s: s.DeleteCollection(pb.DeleteCollectionRequest(name=HUGE)),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "GetDocument id": (
        lambda s: s.GetDocument(pb.GetDocumentRequest(collection="docs", id=HUGE)),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "GetDocument collection": (
        lambda s: s.GetDocument(pb.GetDocumentRequest(collection=HUGE, id="x")),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "GetDocument unknown id": (
        lambda s: s.GetDocument(pb.GetDocumentRequest(collection="docs", id="é" * 256)),
        grpc.StatusCode.NOT_FOUND,
    ),
    "ListDocuments collection": (
        lambda s: s.ListDocuments(pb.ListDocumentsRequest(collection=HUGE)),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "ListDocuments filter key": (
        lambda s: s.ListDocuments(
            pb.ListDocumentsRequest(collection="docs", filter=long_key_filter())
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "DeleteDocuments filter key": (
        lambda s: s.DeleteDocuments(
            pb.DeleteDocumentsRequest(collection="docs", filter=long_key_filter())
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "Search filter key": (
        lambda s: s.Search(
            pb.SearchRequest(collection="docs", query="q", filter=long_key_filter())
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "UpsertDocuments collection": (
        lambda s: s.UpsertDocuments(
            pb.UpsertDocumentsRequest(collection=HUGE, documents=[pb.Document(id="a", text="t")])
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
}


@pytest.mark.parametrize("name", ECHOING_CALLS)
def test_huge_echoed_input_is_refused_with_a_short_message(small_stub: Stub, name: str) -> None:
    """Before: RESOURCE_EXHAUSTED "Stream removed" (the trailers overflowed)."""
    call, expected = ECHOING_CALLS[name]
    code, message, violations = failure(lambda: call(small_stub))
    assert code == expected, message
    assert_short(message, violations)


def assert_short(message: str, violations: list[tuple[str, str]]) -> None:
    """Within the bounds (message and description 1,024 bytes, field path
    256), and an echo is 80 characters and the length: the filter parser's
    too, which echoed a whole key (messages of 1,039-1,041 bytes, cut only
    after the bound was applied)."""
    assert len(message.encode()) <= 1024
    for field, description in violations:
        assert len(field.encode()) <= 256 and len(description.encode()) <= 1024
        assert HUGE[:81] not in field and HUGE[:81] not in description
    assert HUGE[:81] not in message
    assert len(message) < 500


@pytest.mark.parametrize("method", ["UpsertDocuments", "IngestDocuments"])
def test_huge_values_in_upserted_documents_get_short_item_statuses(
    small_stub: Stub, method: str
) -> None:
    documents = [
        pb.Document(id=HUGE, text="t"),
        pb.Document(id="m", text="t", metadata={HUGE: common.MetadataValue(int_value=1)}),
        pb.Document(id="d" * 500, text="t"),
        pb.Document(id="d" * 500, text="t"),
    ]
    if method == "UpsertDocuments":
        results = small_stub.UpsertDocuments(
            pb.UpsertDocumentsRequest(collection="docs", documents=documents)
        ).results
    else:
        request = pb.IngestDocumentsRequest(collection="docs", documents=documents)
        (response,) = small_stub.IngestDocuments(iter([request]))
        results = response.results
    for result in [results[i] for i in (0, 1, 3)]:
        assert result.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        violations = []
        for detail in result.status.details:
            bad_request = error_details_pb2.BadRequest()
            if detail.Unpack(bad_request):
                violations += [(v.field, v.description) for v in bad_request.field_violations]
        assert_short(result.status.message, violations)
    assert "…(500 chars)" in results[3].status.message
    assert len(results[3].status.message) < 300
