"""The SDK's errors: one small hierarchy for every failed call.

Every `grpc.RpcError` a call meets becomes an `AskmojoError` subclass chosen by
its status code, carrying the code, the service's message and the field
violations the service attached (google.rpc.BadRequest in the status details),
so callers catch `askmojo.client.NotFound` instead of comparing codes. A bad
filter or document is refused locally, before any call, as `InvalidArgument`
(and `InvalidFilter` for filters) with the same shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2

# Trailing metadata key carrying the serialised google.rpc.Status.
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class Violation:
    """One bad field of a request: `field` is a path such as
    `documents[2].metadata['year']` or `where["year"]["$gte"]`."""

    field: str
    description: str


class AskmojoError(Exception):
    """A call failed. `code` is the gRPC status code, `message` the service's
    (or the SDK's) explanation, `violations` the bad fields when the input
    was refused (empty otherwise)."""

    #: The code an instance of this class carries when none is given.
    default_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        violations: Sequence[Violation] = (),
    ) -> None:
        super().__init__(message)
        self.code: grpc.StatusCode = code if code is not None else self.default_code
        self.message = message
        self.violations: tuple[Violation, ...] = tuple(violations)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidArgument(AskmojoError, ValueError):
    """The request was refused as malformed (locally or by the service)."""

    default_code = grpc.StatusCode.INVALID_ARGUMENT


class InvalidFilter(InvalidArgument):
    """A `where` filter that cannot be compiled; raised before any call."""


class NotFound(AskmojoError):
    """No such collection or document."""

    default_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(AskmojoError):
    """A collection of that name exists already."""

    default_code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(AskmojoError):
    """The system is not in a state for this call (e.g. a model or dimension
    mismatch, or the vector service is not configured)."""

    default_code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(AskmojoError):
    """The service (or one it depends on) cannot be reached right now. Calls
    the SDK marks idempotent were already retried with backoff."""

    default_code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(AskmojoError):
    """No API key, or one the service does not know."""

    default_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(AskmojoError):
    """The key may not make this call (a read-only key on a write)."""

    default_code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(AskmojoError):
    """A queue or limit is full; retried with backoff where idempotent."""

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(AskmojoError):
    """No answer within the call's timeout."""

    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(AskmojoError):
    """The call was cancelled (by this client, or the connection went)."""

    default_code = grpc.StatusCode.CANCELLED


class Aborted(AskmojoError):
    """A concurrent change got in the way; the same request may be sent again."""

    default_code = grpc.StatusCode.ABORTED


_BY_CODE: dict[grpc.StatusCode, type[AskmojoError]] = {
    cls.default_code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Unavailable,
        Unauthenticated,
        PermissionDenied,
        ResourceExhausted,
        DeadlineExceeded,
        Cancelled,
        Aborted,
    )
}
_CODE_BY_NUMBER: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


def status_code(number: int) -> grpc.StatusCode:
    """The grpc.StatusCode of a google.rpc.Code number (UNKNOWN if unknown)."""
    return _CODE_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def violations_of(status: status_pb2.Status) -> tuple[Violation, ...]:
    """The field violations of google.rpc.BadRequest details in `status`."""
    found: list[Violation] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            found.extend(Violation(v.field, v.description) for v in bad_request.field_violations)
    return tuple(found)


def error_from_status(status: status_pb2.Status) -> AskmojoError | None:
    """The error a google.rpc.Status stands for (a per-item status of a batch
    result, say); None when it is OK."""
    if status.code == code_pb2.OK:
        return None
    code = status_code(status.code)
    cls = _BY_CODE.get(code, AskmojoError)
    return cls(status.message, code=code, violations=violations_of(status))


def error_from_rpc(exc: grpc.RpcError) -> AskmojoError:
    """The SDK error for a failed call (sync `grpc.RpcError` or
    `grpc.aio.AioRpcError`), its violations read from the trailing metadata."""
    code: grpc.StatusCode = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    message: str = (exc.details() if hasattr(exc, "details") else None) or ""
    violations: tuple[Violation, ...] = ()
    for key, value in _trailing(exc):
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status()
            try:
                status.MergeFromString(value)
            except Exception:  # a malformed trailer must not hide the error itself
                continue
            violations = violations_of(status)
    cls = _BY_CODE.get(code, AskmojoError)
    error = cls(message or code.name.lower().replace("_", " "), code=code, violations=violations)
    return error


def _trailing(exc: grpc.RpcError) -> Sequence[tuple[str, Any]]:
    getter = getattr(exc, "trailing_metadata", None)
    if getter is None:
        return ()
    try:
        metadata = getter()
    except Exception:  # not every RpcError (e.g. a local one) has trailers
        return ()
    return tuple(metadata or ())
