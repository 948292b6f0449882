"""OpenTelemetry traces across both services (DESIGN.md §9), off by default.

Tracing is on only when asked for through the standard variables:
`OTEL_TRACES_EXPORTER` naming `otlp` and/or `console`, or, with it unset, an
OTLP endpoint (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_ENDPOINT`).
`OTEL_SDK_DISABLED=true` turns it off whatever else is set. Off, no tracer
provider exists and no interceptor is installed: the call path is untouched.

Everything else is the SDK's own reading of the environment: the resource
(`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`; our name is only the
default), the sampler (`OTEL_TRACES_SAMPLER[_ARG]`, parent-based by default,
so a caller's sampling decision is kept), the batch processor (`OTEL_BSP_*`),
the exporter (`OTEL_EXPORTER_OTLP_*`: endpoint, headers, TLS, timeout) and
the propagators (`OTEL_PROPAGATORS`, W3C trace context and baggage by default).

The provider is built in the process that serves, when the first
interceptor is asked for, not in `configure`: the OTLP exporter opens a gRPC
channel, and the metadata service's supervisor must fork its workers before
any gRPC object exists in it. Each worker so builds its own provider, with
its own export thread and channel; a multiprocessing finalizer flushes it
when the worker ends (a forked worker leaves through os._exit, which skips
atexit).

Spans: one SERVER span per call (not for the health service, which probes
call every few seconds), named like the full method
(`askmojo.metadata.v1.MetadataService/Search`), child of the caller's
context from the `traceparent`/`tracestate` metadata; one CLIENT span per
outgoing call, whose context goes out in the call's metadata. Attributes are
the semantic conventions' rpc.* and the status code, never a request field
or an error message (either could hold document text).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import multiprocessing.util
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.trace import SpanKind, Status, StatusCode

from askmojo.common.rpc import rewrapped_handler

_LOGGER = logging.getLogger(__name__)

EXPORTERS = ("otlp", "console")
_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
# Orchestrator probes: a trace each every few seconds would bury the calls.
_UNTRACED_PREFIXES = ("/grpc.health.v1.Health/",)
# Server side, the semantic conventions count only these as the server's
# fault; a client span counts every code but OK.
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True)
class TracingConfig:
    service_name: str
    exporters: tuple[str, ...]


def requested_exporters(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The exporters the environment asks for; empty means tracing is off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ()
    named = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not named:
        # The specification's default exporter is otlp; ours is none, unless
        # an endpoint says where the traces should go.
        if any(environ.get(name, "").strip() for name in _ENDPOINT_VARIABLES):
            return ("otlp",)
        return ()
    chosen: list[str] = []
    for name in (part.strip() for part in named.split(",")):
        if name in EXPORTERS and name not in chosen:
            chosen.append(name)
        elif name and name != "none":
            _LOGGER.warning(
                "OTEL_TRACES_EXPORTER: unsupported exporter ignored",
                extra={"exporter": name, "supported": ",".join(EXPORTERS)},
            )
    return tuple(chosen)


class _State:
    """This process's: what configure() decided, and the tracer once built."""

    config: TracingConfig | None = None
    tracer: trace.Tracer | None = None
    tracer_pid = 0


_state = _State()


def configure(service_name: str) -> None:
    """Reads the standard OTEL_* variables (once per process, after logging
    is configured); does nothing unless tracing is asked for. The provider
    itself is built later, in the process that serves (see the module)."""
    exporters = requested_exporters(os.environ)
    if not exporters:
        _state.config = None
        return
    _state.config = TracingConfig(service_name, exporters)
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    )
    if "otlp" in exporters and protocol.strip().lower() not in ("", "grpc"):
        _LOGGER.warning(
            "only the OTLP gRPC exporter is installed; exporting over gRPC",
            extra={"protocol": protocol},
        )
    _LOGGER.info(
        "tracing on",
        extra={
            "exporters": ",".join(exporters),
            # The endpoint only: OTEL_EXPORTER_OTLP_HEADERS may hold a key.
            "endpoint": next(
                (os.environ[n] for n in _ENDPOINT_VARIABLES if os.environ.get(n, "").strip()),
                "default",
            ),
        },
    )


def enabled() -> bool:
    return _state.config is not None


def server_interceptors() -> list[Any]:
    """The SERVER-span interceptor, outermost; empty when tracing is off."""
    tracer = _process_tracer()
    return [] if tracer is None else [_ServerTracing(tracer)]


def client_interceptors() -> list[Any]:
    """grpc.aio client interceptors (one per call kind, as grpc.aio sorts
    them by type): a CLIENT span per call, its context sent in the call's
    metadata. Empty when tracing is off."""
    tracer = _process_tracer()
    if tracer is None:
        return []
    return [
        _UnaryUnaryTracing(tracer),
        _UnaryStreamTracing(tracer),
        _StreamUnaryTracing(tracer),
        _StreamStreamTracing(tracer),
    ]


def _process_tracer() -> trace.Tracer | None:
    """This process's tracer, its provider built on first use (and again in
    a forked child that had inherited its parent's)."""
    config = _state.config
    if config is None:
        return None
    if _state.tracer is None or _state.tracer_pid != os.getpid():
        _state.tracer = _build_provider(config).get_tracer("askmojo")
        _state.tracer_pid = os.getpid()
    return _state.tracer


def _build_provider(config: TracingConfig) -> TracerProvider:
    resource = Resource.create()  # OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: config.service_name}))
    # Tells the metadata service's workers apart.
    resource = resource.merge(Resource({"process.pid": os.getpid()}))
    # Shut down by the finalizer below, which also runs at a normal exit.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    for name in config.exporters:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    trace.set_tracer_provider(provider)
    multiprocessing.util.Finalize(None, provider.shutdown, exitpriority=100)
    return provider


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter(out=sys.stderr)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # endpoint, headers, TLS, timeout: OTEL_EXPORTER_OTLP_*


# --- names and attributes -----------------------------------------------------


@dataclass(frozen=True)
class _Rpc:
    span_name: str
    attributes: dict[str, str]


@functools.lru_cache(maxsize=512)
def _rpc(method: str | bytes) -> _Rpc:
    """`/pkg.Service/Method` -> span name `pkg.Service/Method` and the
    semantic conventions' rpc.* attributes."""
    full = method.decode() if isinstance(method, bytes) else method
    full = full.lstrip("/")
    service, _, name = full.rpartition("/")
    return _Rpc(full, {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name})


def _set_outcome(span: trace.Span, code: grpc.StatusCode, errors: Callable[[Any], bool]) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if errors(code):
        span.set_attribute("error.type", code.name)
        span.set_status(Status(StatusCode.ERROR, code.name))


def _server_error(code: grpc.StatusCode) -> bool:
    return code in _SERVER_ERRORS


def _client_error(code: grpc.StatusCode) -> bool:
    return code is not grpc.StatusCode.OK


# --- server ---------------------------------------------------------------------


class _MetadataGetter(Getter[Sequence[tuple[str, Any]]]):
    """Reads W3C trace context from a call's invocation metadata."""

    def get(self, carrier: Sequence[tuple[str, Any]], key: str) -> list[str] | None:
        values = [v if isinstance(v, str) else v.decode() for k, v in carrier if k == key]
        return values or None

    def keys(self, carrier: Sequence[tuple[str, Any]]) -> list[str]:
        return [k for k, _ in carrier]


_GETTER = _MetadataGetter()


class _ServerTracing(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """One SERVER span around each call, current while the handler runs (so
    its logs carry the trace id and its outgoing calls are its children)."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer
        self._handlers: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(_UNTRACED_PREFIXES):
            return handler
        cached = self._handlers.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        rpc = _rpc(method)
        traced = rewrapped_handler(handler, lambda b: _traced(b, rpc, self._tracer))
        self._handlers[method] = (handler, traced)
        return traced


def _start_server_span(
    tracer: trace.Tracer, rpc: _Rpc, context: grpc.aio.ServicerContext[Any, Any]
) -> tuple[trace.Span, object]:
    parent = propagate.extract(context.invocation_metadata() or (), getter=_GETTER)
    span = tracer.start_span(
        rpc.span_name, context=parent, kind=SpanKind.SERVER, attributes=rpc.attributes
    )
    return span, otel_context.attach(trace.set_span_in_context(span, parent))


def _end_server_span(
    span: trace.Span,
    token: object,
    context: grpc.aio.ServicerContext[Any, Any],
    error: BaseException | None,
) -> None:
    try:
        if isinstance(error, asyncio.CancelledError):
            code = grpc.StatusCode.CANCELLED
        elif error is None or isinstance(error, grpc.aio.AbortError):
            code = _code_of(context)
        else:
            # gRPC answers UNKNOWN; the class only (its message could hold
            # anything, document text included).
            code = grpc.StatusCode.UNKNOWN
            span.set_attribute("exception.type", type(error).__qualname__)
        _set_outcome(span, code, _server_error)
        span.end()
    finally:
        otel_context.detach(token)  # type: ignore[arg-type]


def _code_of(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    code = context.code()
    if code is None:
        return grpc.StatusCode.OK
    if isinstance(code, grpc.StatusCode):
        return code
    return _CODES_BY_NUMBER.get(int(code), grpc.StatusCode.UNKNOWN)


def _traced(behavior: Callable[..., Any], rpc: _Rpc, tracer: trace.Tracer) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):

        async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            span, token = _start_server_span(tracer, rpc, context)
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as exc:
                _end_server_span(span, token, context, exc)
                raise
            _end_server_span(span, token, context, None)

        return streaming

    async def unary(request: Any, context: Any) -> Any:
        span, token = _start_server_span(tracer, rpc, context)
        try:
            result = behavior(request, context)
            response = (await result) if inspect.isawaitable(result) else result
        except BaseException as exc:
            _end_server_span(span, token, context, exc)
            raise
        _end_server_span(span, token, context, None)
        return response

    return unary


# --- client ---------------------------------------------------------------------

# Tasks ending streaming CLIENT spans (held so they are not collected early).
_finishing: set[asyncio.Task[None]] = set()


class _ClientTracing:
    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    def _start(self, details: grpc.aio.ClientCallDetails) -> tuple[trace.Span, Any]:
        rpc = _rpc(details.method)
        span = self._tracer.start_span(
            rpc.span_name, kind=SpanKind.CLIENT, attributes=rpc.attributes
        )
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        propagate.inject(metadata, context=trace.set_span_in_context(span))
        return span, grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def _unary_response(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        """Unary answer: the call is awaited here, so the span ends with it."""
        span, details = self._start(details)
        try:
            call = await continuation(details, request)
            with contextlib.suppress(grpc.aio.AioRpcError):
                await call  # an error: the caller sees it when it awaits the call
            code = await call.code()
        except asyncio.CancelledError:
            _end_client_span(span, grpc.StatusCode.CANCELLED)
            raise
        except BaseException:
            _end_client_span(span, grpc.StatusCode.UNKNOWN)
            raise
        _end_client_span(span, code)
        return call

    async def _stream_response(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        """Streamed answer: the call goes back to the caller as it is (it
        iterates it, may cancel it); the span ends when the call is done."""
        span, details = self._start(details)
        try:
            call = await continuation(details, request)
        except asyncio.CancelledError:
            _end_client_span(span, grpc.StatusCode.CANCELLED)
            raise
        except BaseException:
            _end_client_span(span, grpc.StatusCode.UNKNOWN)
            raise
        call.add_done_callback(functools.partial(_stream_done, span))
        return call


def _stream_done(span: trace.Span, call: Any) -> None:
    # The status is there, but grpc.aio hands it out only to a coroutine.
    ended = time.time_ns()
    task = asyncio.get_running_loop().create_task(_end_stream_span(span, call, ended))
    _finishing.add(task)
    task.add_done_callback(_finishing.discard)


async def _end_stream_span(span: trace.Span, call: Any, ended: int) -> None:
    try:
        code = await call.code()
    except asyncio.CancelledError:
        code = grpc.StatusCode.CANCELLED
    _end_client_span(span, code, ended)


def _end_client_span(span: trace.Span, code: grpc.StatusCode, ended: int | None = None) -> None:
    _set_outcome(span, code, _client_error)
    span.end(ended)


class _UnaryUnaryTracing(_ClientTracing, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await self._unary_response(continuation, client_call_details, request)


class _StreamUnaryTracing(_ClientTracing, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._unary_response(continuation, client_call_details, request_iterator)


class _UnaryStreamTracing(_ClientTracing, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await self._stream_response(continuation, client_call_details, request)


class _StreamStreamTracing(_ClientTracing, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._stream_response(continuation, client_call_details, request_iterator)
