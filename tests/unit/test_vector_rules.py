"""Pure rules of the vector service: collection names as Chroma enforces
them, Chroma's own errors as gRPC statuses, settings that cannot work."""

from __future__ import annotations

import chromadb
import chromadb.errors
import grpc
import pytest
from pydantic import ValidationError

from askmojo.common.names import COLLECTION_NAME_RULE, is_valid_collection_name
from vector_service.config import VectorSettings
from vector_service.errors import InvalidArgument, to_rpc_status
from vector_service.paging import decode_page_token, encode_page_token, query_fingerprint


@pytest.mark.parametrize(
    "name",
    ["abc", "a-b", "docs.v2", "1.2.3.4x", "A_1", "a" * 63, "10.0.0"],
)
def test_names_chroma_accepts_are_valid(name: str) -> None:
    assert is_valid_collection_name(name)


@pytest.mark.parametrize(
    "name",
    ["", "ab", "-ab", "ab_", "ab..c", "a b", "a" * 64, "192.168.1.1", "10.0.0.1", "ünï"],
)
def test_names_chroma_refuses_are_invalid(name: str) -> None:
    assert not is_valid_collection_name(name)


def test_the_rule_agrees_with_chroma_itself() -> None:
    """Every name we accept, Chroma accepts; every name Chroma refuses, we refuse."""
    client = chromadb.EphemeralClient()
    for name in ["abc", "1.2.3.4x", "a" * 63, "192.168.1.1", "ab..c", "-ab", "ab_"]:
        try:
            client.create_collection(name)
            chroma_ok = True
        except chromadb.errors.InvalidArgumentError:
            chroma_ok = False
        assert is_valid_collection_name(name) == chroma_ok, name
    assert "IPv4" in COLLECTION_NAME_RULE


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (chromadb.errors.InvalidArgumentError("bad where"), grpc.StatusCode.INVALID_ARGUMENT),
        (chromadb.errors.NotFoundError("gone"), grpc.StatusCode.NOT_FOUND),
        (chromadb.errors.UniqueConstraintError("taken"), grpc.StatusCode.ALREADY_EXISTS),
        (chromadb.errors.RateLimitError("slow down"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (chromadb.errors.BatchSizeExceededError("big"), grpc.StatusCode.INVALID_ARGUMENT),
        (chromadb.errors.InternalError("boom"), grpc.StatusCode.INTERNAL),
        (chromadb.errors.ChromaError("anything"), grpc.StatusCode.INTERNAL),
    ],
)
def test_chroma_errors_keep_their_meaning(error: Exception, code: grpc.StatusCode) -> None:
    status = to_rpc_status(error)
    assert status.code == code.value[0]
    if code is not grpc.StatusCode.INTERNAL:
        assert str(error) in status.message
    else:  # internals are logged, not shown
        assert "ref" in status.message and str(error) not in status.message


def _settings(**values: object) -> VectorSettings:
    return VectorSettings(_env_file=None, **values)  # type: ignore[arg-type]


def test_a_call_larger_than_the_queue_is_refused_at_start_up() -> None:
    with pytest.raises(ValidationError, match="MAX_TEXTS_PER_CALL must not exceed"):
        _settings(max_queued_texts=100, max_texts_per_call=200, max_batch_texts=64)
    with pytest.raises(ValidationError, match="MAX_BATCH_TEXTS must not exceed"):
        _settings(max_queued_texts=100, max_texts_per_call=50, max_batch_texts=128)


def test_default_threads_never_oversubscribe() -> None:
    settings = _settings()
    assert not settings.oversubscribed
    assert _settings(max_workers=1, torch_threads=64).oversubscribed


def test_no_status_outgrows_the_trailers() -> None:
    """Whatever an error says (shared code and Chroma may echo input), the
    status keeps message and violations to a few KiB."""
    huge = "ü" * 50_000
    for error in (
        InvalidArgument(f"records[0].metadata[{huge!r}]", f"key {huge!r} is invalid"),
        chromadb.errors.InvalidArgumentError(f"Got: {huge}"),
    ):
        status = to_rpc_status(error)
        assert len(status.SerializeToString()) < 3 * 1024
        assert len(status.message.encode()) <= 1024


def test_page_tokens_are_opaque_and_bound_to_their_query() -> None:
    query = query_fingerprint("docs", None)
    token = encode_page_token("doc-7#0", query)
    assert decode_page_token(token, query) == "doc-7#0"
    assert decode_page_token("", query) is None
    for bad in (str(2**32), "12", "-1", "x", "@@@", "e30", "A" * 9000):  # e30: base64 of {}
        with pytest.raises(InvalidArgument, match="malformed page token"):
            decode_page_token(bad, query)
    with pytest.raises(InvalidArgument, match="different query"):
        decode_page_token(token, query_fingerprint("other", None))
