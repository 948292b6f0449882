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


class VectorError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(VectorError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, description: str) -> None:
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
    """The status a client sees for `exc`, its texts bounded to fit the
    trailers (`make_status` and `bad_request_status` see to that, whatever a
    message from shared code or Chroma echoes)."""
    if isinstance(exc, InvalidArgument):
        return bad_request_status(str(exc), exc.violations)
    if isinstance(exc, InvalidFilterError):
        return bad_request_status(str(exc), [(exc.field, exc.description)])
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
