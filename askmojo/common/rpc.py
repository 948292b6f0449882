"""gRPC plumbing both services share: packing `google.rpc.Status`, the
decorator that turns every exception of a servicer method into a status
through the service's own error map (each service keeps one, in errors.py),
and the `RequestGuard` interceptor that answers undecodable or oversized
requests with INVALID_ARGUMENT before any servicer sees them."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from askmojo.common.echo import FIELD_BYTES, fit
from askmojo.common.filters import FilterLimits, InvalidFilterError, check_filter_size
from askmojo.common.logs import RPC_METHOD
from askmojo.common.v1 import common_pb2

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
    """A status whose message fits the trailers (`fit`), whatever it echoes."""
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    return status_pb2.Status(code=code.value[0], message=fit(message), details=packed)


def bad_request_status(message: str, violations: Sequence[tuple[str, str]]) -> status_pb2.Status:
    """INVALID_ARGUMENT with google.rpc.BadRequest field violations, each
    text bounded as `make_status` bounds the message."""
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field=fit(f, FIELD_BYTES), description=fit(d)
            )
            for f, d in violations
        ]
    )
    return make_status(grpc.StatusCode.INVALID_ARGUMENT, message, [bad_request])


def grpc_method_decorator(to_status: ToStatus) -> Callable[[Method], Method]:
    """A decorator for unary and streaming servicer methods: any exception is
    mapped by `to_status` and ends the call with that status; each call's
    outcome is logged at debug level. While the method runs, logs.RPC_METHOD
    names it (the log records' `rpc_method`): one context variable set and
    reset per call."""

    def decorate(method: Method) -> Method:
        name = method.__name__
        # `pkg.Service/Method`, found at the first call (the servicer's class,
        # hence its service, is not known when the method is decorated).
        full_names: dict[type[Any], str] = {}

        def full_name(servicer: Any) -> str:
            cls = type(servicer)
            found = full_names.get(cls)
            if found is None:
                found = full_names[cls] = f"{_service_name(cls)}/{name}"
            return found

        async def abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
            # A stream message the RequestGuard refused ends the call with its status.
            status = exc.status if isinstance(exc, RequestRejected) else to_status(exc)
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
                token = RPC_METHOD.set(full_name(self))
                try:
                    try:
                        async for response in method(self, request, context):
                            yield response
                    except Exception as exc:  # the one place exceptions become statuses
                        await abort(context, exc)
                    _log_ok(name, started)
                finally:
                    _reset_method(token)

            return stream_wrapper  # type: ignore[return-value]

        @functools.wraps(method)
        async def unary_wrapper(self: Any, request: Any, context: Any) -> Any:
            started = time.perf_counter()
            token = RPC_METHOD.set(full_name(self))
            try:
                try:
                    response = await method(self, request, context)
                except Exception as exc:  # the one place exceptions become statuses
                    await abort(context, exc)
                _log_ok(name, started)
                return response
            finally:
                RPC_METHOD.reset(token)

        return unary_wrapper  # type: ignore[return-value]

    return decorate


def _service_name(servicer_class: type[Any]) -> str:
    """The full service name of a servicer: from the descriptor of the
    generated `...Servicer` base class it derives from, else its class name."""
    for base in servicer_class.__mro__:
        module = sys.modules.get(base.__module__.removesuffix("_grpc"))
        if base.__module__.endswith("_pb2_grpc") and base.__name__.endswith("Servicer"):
            descriptor = getattr(module, "DESCRIPTOR", None)
            service = base.__name__.removesuffix("Servicer")
            if descriptor is not None and service in descriptor.services_by_name:
                return str(descriptor.services_by_name[service].full_name)
    return servicer_class.__name__


def _reset_method(token: contextvars.Token[str | None]) -> None:
    # ValueError: a stream closed from another context (garbage collection).
    with contextlib.suppress(ValueError):
        RPC_METHOD.reset(token)


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


# --- requests refused before a servicer sees them ------------------------------


class RequestRejected(Exception):
    """Raised from a guarded request stream at a message that could not be
    decoded or is too large: the call ends with `status`."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status


class _Refused:
    """What a guarded deserializer returns instead of a request."""

    __slots__ = ("status",)

    def __init__(self, status: status_pb2.Status) -> None:
        self.status = status


_FILTER_TYPE = common_pb2.Filter.DESCRIPTOR.full_name
_MAX_DETAIL_CHARS = 200


def decode_error_status(exc: Exception) -> status_pb2.Status:
    """INVALID_ARGUMENT for bytes that are no valid message: protobuf's own
    reason (bad UTF-8, corrupt wire data, nesting too deep), never a class name."""
    reason = str(exc)
    # "Error parsing message with type 'pkg.Request': Wire format was corrupt"
    reason = reason.rpartition("': ")[2] or "malformed protobuf"
    reason = reason[:_MAX_DETAIL_CHARS]
    return bad_request_status(
        f"request could not be decoded: {reason}", [("request", f"not a valid message: {reason}")]
    )


class RequestGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps every method handler of the server (health and reflection too):

    - request bytes that do not decode answer INVALID_ARGUMENT ("request could
      not be decoded: ...") instead of gRPC's UNKNOWN naming DecodeError; in a
      request stream such a message ends the stream with that status;
    - a request's `askmojo.common.v1.Filter` fields wider than `filter_limits`
      (MAX_FILTER_CONDITIONS, MAX_FILTER_VALUES) answer INVALID_ARGUMENT
      before any tree is built.
    """

    def __init__(self, filter_limits: FilterLimits) -> None:
        self._limits = filter_limits
        self._handlers: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self._filter_fields: dict[type[Any], tuple[str, ...]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        cached = self._handlers.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        guarded = rewrapped_handler(
            handler,
            _guard_stream if handler.request_streaming else _guard_unary,
            self._deserializer(handler.request_deserializer),
        )
        self._handlers[method] = (handler, guarded)
        return guarded

    def _deserializer(self, deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
        def guarded(data: bytes) -> Any:
            try:
                request = deserialize(data)
            except Exception as exc:  # DecodeError; RecursionError past protobuf's limit
                return _Refused(decode_error_status(exc))
            refusal = self._check(request)
            return request if refusal is None else _Refused(refusal)

        return guarded

    def _check(self, request: Any) -> status_pb2.Status | None:
        fields = self._filter_fields.get(type(request))
        if fields is None:
            descriptor = getattr(request, "DESCRIPTOR", None)
            fields = tuple(
                field.name
                for field in (descriptor.fields if descriptor is not None else ())
                if field.message_type is not None
                and field.message_type.full_name == _FILTER_TYPE
                and not _is_repeated(field)
            )
            self._filter_fields[type(request)] = fields
        for name in fields:
            if request.HasField(name):
                try:
                    check_filter_size(getattr(request, name), self._limits, name)
                except InvalidFilterError as exc:
                    return bad_request_status(str(exc), [(exc.field, exc.description)])
        return None


def _is_repeated(field: Any) -> bool:
    is_repeated = getattr(field, "is_repeated", None)
    if is_repeated is not None:
        return bool(is_repeated)
    return bool(field.label == field.LABEL_REPEATED)


async def _refuse(context: grpc.aio.ServicerContext[Any, Any], status: status_pb2.Status) -> None:
    _LOGGER.debug(
        "request refused", extra={"code": code_pb2.Code.Name(status.code), "error": status.message}
    )
    await context.abort_with_status(rpc_status.to_status(status))


def rewrapped_handler(
    handler: grpc.RpcMethodHandler,
    wrap: Callable[[Callable[..., Any]], Callable[..., Any]],
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """A handler of `handler`'s kind (unary or streaming each way) running
    `wrap(its behaviour)` with its serializers; `request_deserializer`, when
    given, in place of its own. What every server interceptor wrapping a
    method (the guard, metrics, tracing) builds."""
    deserializer = request_deserializer or handler.request_deserializer
    serializer = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            wrap(handler.unary_unary), deserializer, serializer
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            wrap(handler.unary_stream), deserializer, serializer
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            wrap(handler.stream_unary), deserializer, serializer
        )
    return grpc.stream_stream_rpc_method_handler(
        wrap(handler.stream_stream), deserializer, serializer
    )


def _guard_unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):

        async def stream_out(request: Any, context: Any) -> AsyncIterator[Any]:
            if isinstance(request, _Refused):
                await _refuse(context, request.status)
            async for response in behavior(request, context):
                yield response

        return stream_out

    async def unary_out(request: Any, context: Any) -> Any:
        if isinstance(request, _Refused):
            await _refuse(context, request.status)
        result = behavior(request, context)
        return (await result) if inspect.isawaitable(result) else result

    return unary_out


def _guard_stream(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def checked(requests: AsyncIterator[Any], refused: list[_Refused]) -> AsyncIterator[Any]:
        async for request in requests:
            if isinstance(request, _Refused):
                refused.append(request)
                raise RequestRejected(request.status)
            yield request

    async def end(context: Any, refused: list[_Refused]) -> None:
        if refused:
            await _refuse(context, refused[0].status)

    if inspect.isasyncgenfunction(behavior):

        async def stream_out(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            refused: list[_Refused] = []
            try:
                async for response in behavior(checked(requests, refused), context):
                    yield response
            except grpc.aio.AbortError:
                raise  # already ended with a status (ours, via grpc_method)
            except Exception:
                await end(context, refused)
                raise
            await end(context, refused)

        return stream_out

    async def unary_out(requests: AsyncIterator[Any], context: Any) -> Any:
        refused: list[_Refused] = []
        try:
            result = behavior(checked(requests, refused), context)
            response = (await result) if inspect.isawaitable(result) else result
        except grpc.aio.AbortError:
            raise
        except Exception:
            await end(context, refused)
            raise
        await end(context, refused)
        return response

    return unary_out
