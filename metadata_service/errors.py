"""The metadata service's errors and the one place they become gRPC statuses.

Service code raises a `MetadataError` subclass with a message a person can act
on. `to_rpc_status` maps any exception to a `google.rpc.Status` — used both to
abort a call and for the per-item statuses of batch results — and
`grpc_method` (askmojo.common.rpc) applies it to every servicer method, so no RPC can end in
UNKNOWN or leak a stack trace.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any

import grpc
from google.rpc import status_pb2
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from askmojo.common.filters import InvalidFilterError
from askmojo.common.logs import exception_summary
from askmojo.common.rpc import (
    bad_request_status,
    deadline_passed,
    grpc_method_decorator,
    make_status,
)
from metadata_service.db.sqlite_writers import DatabaseBusy
from metadata_service.vector_client import VectorServiceError, VectorServiceUnavailable

_LOGGER = logging.getLogger(__name__)


class MetadataError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(MetadataError):
    """Bad input. `violations` are (field, description) pairs, sent to the
    client as google.rpc.BadRequest details; the message is "field:
    description" unless given."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, description: str, *, message: str | None = None) -> None:
        super().__init__(message or f"{field}: {description}")
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


class DeadlineExceeded(MetadataError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class IndexingFailed(MetadataError):
    """Stored, but the vector service refused its chunks as they are (the
    message says why); sending the document again retries it."""

    code = grpc.StatusCode.FAILED_PRECONDITION


def invalid_filter(exc: InvalidFilterError) -> InvalidArgument:
    return InvalidArgument(exc.field, exc.description)


def to_rpc_status(exc: BaseException) -> status_pb2.Status:
    """The status a client sees for `exc`, its texts bounded to fit the
    trailers (`make_status` and `bad_request_status` see to that; echoes of
    client input go through `askmojo.common.echo.quoted`). Unexpected
    exceptions are logged with their traceback under a reference the client
    message carries; database details (hosts, users, SQL) stay in the log."""
    if isinstance(exc, InvalidArgument):
        return bad_request_status(str(exc), exc.violations)
    if isinstance(exc, MetadataError):
        return make_status(exc.code, str(exc))
    if isinstance(exc, InvalidFilterError):
        return to_rpc_status(invalid_filter(exc))
    if isinstance(exc, VectorServiceUnavailable):
        # The vector service's address and error are the operator's business.
        _LOGGER.warning("vector service unavailable: %s", exc.detail)
        return make_status(grpc.StatusCode.UNAVAILABLE, str(exc))
    if isinstance(exc, VectorServiceError):
        # Codes that describe the request keep their meaning; the rest are
        # the vector service's trouble, reported as such, never UNKNOWN.
        code = exc.code if exc.code in _PASSED_ON else grpc.StatusCode.INTERNAL
        return make_status(code, str(exc))
    if isinstance(exc, DatabaseBusy):
        return make_status(grpc.StatusCode.UNAVAILABLE, f"{exc}; retry with backoff")
    if isinstance(exc, PoolTimeoutError):
        return make_status(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "all database connections are busy; retry with backoff",
        )
    if isinstance(exc, DataError):
        _LOGGER.warning("database rejected a value: %s", exc.orig)
        return make_status(
            grpc.StatusCode.INVALID_ARGUMENT,
            "the database rejected a value of this request (too long or not storable)",
        )
    if isinstance(exc, OperationalError):
        outage = _outage_status(exc)
        if outage is not None:
            _LOGGER.warning("database unavailable: %s", exc.orig)
            return outage
    ref = uuid.uuid4().hex[:12]
    if isinstance(exc, DBAPIError):
        # The summary, not the traceback: a DBAPIError's text holds the whole
        # statement (megabytes for a long IN list).
        _LOGGER.error("database error [ref %s]: %s", ref, exception_summary(exc))
    else:
        _LOGGER.error("unexpected error [ref %s]", ref, exc_info=exc)
    return make_status(grpc.StatusCode.INTERNAL, f"internal error (ref {ref}); see the server log")


_PASSED_ON = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)

# OperationalError also covers schema and SQL mistakes (sqlite3 raises it for
# "no such column"); only these mean "try again later".
_OUTAGE_HINTS = (
    "unable to open",
    "disk i/o",
    "could not connect",
    "connection",
    "server closed",
    "terminating",
    "too many clients",
    "read-only",
    "readonly",
)


def is_outage(exc: OperationalError) -> bool:
    """The database is away or dropped the connection (worth a retry), not
    a mistake in the statement."""
    return _outage_status(exc) is not None


def _outage_status(exc: OperationalError) -> status_pb2.Status | None:
    message = str(exc.orig).lower()
    if "database is locked" in message:
        return make_status(
            grpc.StatusCode.UNAVAILABLE,
            "database is locked: another process held it longer than SQLITE_TIMEOUT; retry",
        )
    if "statement timeout" in message:
        return make_status(grpc.StatusCode.DEADLINE_EXCEEDED, "the database query timed out")
    if exc.connection_invalidated or any(hint in message for hint in _OUTAGE_HINTS):
        return make_status(grpc.StatusCode.UNAVAILABLE, "database unavailable; retry later")
    return None


# Every MetadataServicer method wears this: exceptions become statuses here.
grpc_method = grpc_method_decorator(to_rpc_status)


def check_deadline(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """Refuses work whose caller has already given up."""
    if deadline_passed(context):
        raise DeadlineExceeded("the call's deadline passed before its work started")
