"""The metadata service's errors and the one place they become gRPC statuses.

Service code raises a `MetadataError` subclass with a message a person can act
on. `to_rpc_status` maps any exception to a `google.rpc.Status` — used both to
abort a call and for the per-item statuses of batch results — and
`grpc_method` applies it to every servicer method, so no RPC can end in
UNKNOWN or leak a stack trace.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from askmojo.common.filters import InvalidFilterError

_LOGGER = logging.getLogger(__name__)


class MetadataError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(MetadataError):
    """Bad input. `violations` are (field, description) pairs, sent to the
    client as google.rpc.BadRequest details."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.violations: Sequence[tuple[str, str]] = ((field, description),)


class NotFound(MetadataError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(MetadataError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(MetadataError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(MetadataError):
    """A concurrent change got in the way; the same request may be retried."""

    code = grpc.StatusCode.ABORTED


class ResourceExhausted(MetadataError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(MetadataError):
    code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(MetadataError):
    code = grpc.StatusCode.UNIMPLEMENTED


class DeadlineExceeded(MetadataError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


def invalid_filter(exc: InvalidFilterError) -> InvalidArgument:
    return InvalidArgument(exc.field, exc.description)


def _status(code: grpc.StatusCode, message: str, details: Sequence[Any] = ()) -> status_pb2.Status:
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    return status_pb2.Status(code=code.value[0], message=message, details=packed)


OK_STATUS = status_pb2.Status(code=code_pb2.OK)


def to_rpc_status(exc: BaseException) -> status_pb2.Status:
    """The status a client sees for `exc`. Unexpected exceptions are logged
    with their traceback under a reference the client message carries."""
    if isinstance(exc, InvalidArgument):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in exc.violations
            ]
        )
        return _status(exc.code, str(exc), [bad_request])
    if isinstance(exc, MetadataError):
        return _status(exc.code, str(exc))
    if isinstance(exc, InvalidFilterError):
        return to_rpc_status(invalid_filter(exc))
    if isinstance(exc, PoolTimeoutError):
        return _status(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "all database connections are busy; retry with backoff",
        )
    if isinstance(exc, OperationalError) and _is_outage(exc):
        _LOGGER.warning("database unavailable: %s", exc.orig)
        return _status(grpc.StatusCode.UNAVAILABLE, f"database unavailable: {_first_line(exc)}")
    ref = uuid.uuid4().hex[:12]
    if isinstance(exc, DBAPIError):
        _LOGGER.error("database error [ref %s]", ref, exc_info=exc)
    else:
        _LOGGER.error("unexpected error [ref %s]", ref, exc_info=exc)
    return _status(grpc.StatusCode.INTERNAL, f"internal error (ref {ref}); see the server log")


# OperationalError also covers schema and SQL mistakes (sqlite3 raises it for
# "no such column"); only these mean "try again later".
_OUTAGE_HINTS = (
    "database is locked",
    "unable to open",
    "disk i/o",
    "could not connect",
    "connection",
    "server closed",
    "terminating",
    "timeout",
    "too many clients",
    "read-only",
)


def _is_outage(exc: OperationalError) -> bool:
    message = str(exc.orig).lower()
    return exc.connection_invalidated or any(hint in message for hint in _OUTAGE_HINTS)


def _first_line(exc: DBAPIError) -> str:
    return str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc).__name__


Method = TypeVar("Method", bound=Callable[..., Any])


def grpc_method(method: Method) -> Method:
    """Wraps a unary or streaming servicer method: maps exceptions through
    `to_rpc_status` and logs each call's outcome at debug level."""
    name = method.__name__

    async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
        status = to_rpc_status(exc)
        _LOGGER.debug(
            "rpc failed",
            extra={"rpc": name, "code": code_pb2.Code.Name(status.code), "error": status.message},
        )
        await context.abort_with_status(rpc_status.to_status(status))

    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
            started = time.perf_counter()
            try:
                async for response in method(self, request, context):
                    yield response
            except Exception as exc:  # the one place exceptions become statuses
                await _abort(context, exc)
            _log_ok(name, started)

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(method)
    async def unary_wrapper(self: Any, request: Any, context: Any) -> Any:
        started = time.perf_counter()
        try:
            response = await method(self, request, context)
        except Exception as exc:  # the one place exceptions become statuses
            await _abort(context, exc)
        _log_ok(name, started)
        return response

    return unary_wrapper  # type: ignore[return-value]


def _log_ok(name: str, started: float) -> None:
    if _LOGGER.isEnabledFor(logging.DEBUG):
        elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
        _LOGGER.debug("rpc ok", extra={"rpc": name, "code": "OK", "ms": elapsed_ms})


def check_deadline(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """Refuses work whose caller has already given up."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise DeadlineExceeded("the call's deadline passed before its work started")
