"""The vector service's errors and the one place they become gRPC statuses."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any

import grpc
from google.rpc import status_pb2

from askmojo.common.filters import InvalidFilterError
from askmojo.common.rpc import (
    bad_request_status,
    deadline_passed,
    grpc_method_decorator,
    make_status,
)
from vector_service.embedding.batcher import QueueFull
from vector_service.embedding.pool import PoolUnavailable
from vector_service.store import CollectionNotFound, DimensionMismatch, StoreError

_LOGGER = logging.getLogger(__name__)


# Echoed input (a name, an id, a filter key) is cut to this many characters:
# a status travels in the trailers, and gRPC drops a call whose trailers pass
# its limit (8 KiB by default) as RESOURCE_EXHAUSTED "Stream removed".
_ECHO_CHARS = 80
# A last bound, in UTF-8 bytes, on whatever a message or a field violation
# ends up holding (texts from shared code or Chroma may echo input too). The
# message goes out twice (grpc-message, percent-encoded: up to 3x; and inside
# grpc-status-details-bin, base64: 4/3x) and the violation once, so even in
# the worst case the trailers stay under ~6.5 KiB.
_MESSAGE_BYTES = 1024
_FIELD_BYTES = 256


def shorten(value: str, limit: int = _ECHO_CHARS) -> str:
    """`value` as it may be echoed in an error: its first `limit` characters,
    then "…(N chars)" saying how long it really was."""
    if len(value) <= limit:
        return value
    return f"{value[:limit]}…({len(value)} chars)"


def echo(value: str, limit: int = _ECHO_CHARS) -> str:
    """A value quoted in a message: its `repr`, shortened as `shorten` does."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}…({len(value)} chars)"


def fit(text: str, max_bytes: int = _MESSAGE_BYTES) -> str:
    """`text` cut to at most `max_bytes` UTF-8 bytes (the safety net under
    `shorten`, for texts this module did not write)."""
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text
    suffix = f"…({len(text)} chars)"
    head = encoded[: max_bytes - len(suffix.encode())].decode(errors="ignore")
    return head + suffix


class VectorError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(VectorError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, description: str) -> None:
        field, description = fit(field, _FIELD_BYTES), fit(description)
        super().__init__(f"{field}: {description}")
        self.violations: Sequence[tuple[str, str]] = ((field, description),)


class NotFound(VectorError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(VectorError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(VectorError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(VectorError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


def to_rpc_status(exc: BaseException) -> status_pb2.Status:
    status = _to_rpc_status(exc)
    status.message = fit(status.message)
    return status


def _to_rpc_status(exc: BaseException) -> status_pb2.Status:
    if isinstance(exc, InvalidArgument):
        return bad_request_status(str(exc), exc.violations)
    if isinstance(exc, InvalidFilterError):
        violation = (fit(exc.field, _FIELD_BYTES), fit(exc.description))
        return bad_request_status(str(exc), [violation])
    if isinstance(exc, VectorError):
        return make_status(exc.code, str(exc))
    if isinstance(exc, QueueFull):
        return make_status(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    if isinstance(exc, PoolUnavailable):
        return make_status(grpc.StatusCode.UNAVAILABLE, str(exc))
    if isinstance(exc, CollectionNotFound):
        return make_status(grpc.StatusCode.NOT_FOUND, str(exc))
    if isinstance(exc, DimensionMismatch):
        return make_status(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    chroma_code = _chroma_error_code(exc)
    if chroma_code is not None:
        return make_status(chroma_code, f"vector store refused the request: {exc}")
    if isinstance(exc, StoreError) or _is_chroma_outage(exc):
        _LOGGER.warning("vector store unavailable: %s", exc)
        return make_status(grpc.StatusCode.UNAVAILABLE, f"vector store unavailable: {exc}")
    ref = uuid.uuid4().hex[:12]
    _LOGGER.error("unexpected error [ref %s]", ref, exc_info=exc)
    return make_status(grpc.StatusCode.INTERNAL, f"internal error (ref {ref}); see the server log")


# Chroma's own errors by the HTTP-style code each carries (chromadb.errors):
# 4xx are the caller's doing, so they keep their meaning instead of INTERNAL.
_CHROMA_HTTP_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def _chroma_error_code(exc: BaseException) -> grpc.StatusCode | None:
    from chromadb.errors import ChromaError

    # The bare base class also says 400 but is raised for failures of any kind.
    if not isinstance(exc, ChromaError) or type(exc) is ChromaError:
        return None
    return _CHROMA_HTTP_CODES.get(exc.code())


def _is_chroma_outage(exc: BaseException) -> bool:
    """Connection failures to a Chroma server (httpx under chromadb)."""
    return type(exc).__module__.startswith("httpx") or isinstance(exc, ConnectionError)


# Every servicer method wears this: exceptions become statuses here.
grpc_method = grpc_method_decorator(to_rpc_status)


def check_deadline(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    if deadline_passed(context):
        raise DeadlineExceeded("the call's deadline passed before its work started")
