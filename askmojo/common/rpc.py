"""gRPC plumbing both services share: packing `google.rpc.Status`, and the
decorator that turns every exception of a servicer method into a status
through the service's own error map (each service keeps one, in errors.py)."""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

_LOGGER = logging.getLogger(__name__)

OK_STATUS = status_pb2.Status(code=code_pb2.OK)
Method = TypeVar("Method", bound=Callable[..., Any])
ToStatus = Callable[[BaseException], status_pb2.Status]


def status_of(error: BaseException | None, to_status: ToStatus) -> status_pb2.Status:
    """OK for no error, else the service's mapping of it (per-item results)."""
    return OK_STATUS if error is None else to_status(error)


def make_status(
    code: grpc.StatusCode, message: str, details: Sequence[Message] = ()
) -> status_pb2.Status:
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    return status_pb2.Status(code=code.value[0], message=message, details=packed)


def bad_request_status(message: str, violations: Sequence[tuple[str, str]]) -> status_pb2.Status:
    """INVALID_ARGUMENT with google.rpc.BadRequest field violations."""
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
            for f, d in violations
        ]
    )
    return make_status(grpc.StatusCode.INVALID_ARGUMENT, message, [bad_request])


def grpc_method_decorator(to_status: ToStatus) -> Callable[[Method], Method]:
    """A decorator for unary and streaming servicer methods: any exception is
    mapped by `to_status` and ends the call with that status; each call's
    outcome is logged at debug level."""

    def decorate(method: Method) -> Method:
        name = method.__name__

        async def abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
            status = to_status(exc)
            _LOGGER.debug(
                "rpc failed",
                extra={
                    "rpc": name,
                    "code": code_pb2.Code.Name(status.code),
                    "error": status.message,
                },
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
                    await abort(context, exc)
                _log_ok(name, started)

            return stream_wrapper  # type: ignore[return-value]

        @functools.wraps(method)
        async def unary_wrapper(self: Any, request: Any, context: Any) -> Any:
            started = time.perf_counter()
            try:
                response = await method(self, request, context)
            except Exception as exc:  # the one place exceptions become statuses
                await abort(context, exc)
            _log_ok(name, started)
            return response

        return unary_wrapper  # type: ignore[return-value]

    return decorate


def _log_ok(name: str, started: float) -> None:
    if _LOGGER.isEnabledFor(logging.DEBUG):
        elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
        _LOGGER.debug("rpc ok", extra={"rpc": name, "code": "OK", "ms": elapsed_ms})


def deadline_passed(context: grpc.aio.ServicerContext[Any, Any]) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


def call_deadline(context: grpc.aio.ServicerContext[Any, Any], default_seconds: float) -> float:
    """The call's deadline as a time.monotonic() instant, for downstream
    calls; `default_seconds` from now when the client set none."""
    remaining = context.time_remaining()
    return time.monotonic() + (default_seconds if remaining is None else remaining)
