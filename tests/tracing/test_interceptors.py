"""The interceptors themselves, on a real grpc.aio server and channel in
this process, spans kept in memory: the status code of each call kind,
server side and client side, and the context carried between them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from askmojo.common import tracing
from tests.waiting import until

SERVICE = "test.v1.Echo"


def _identity(data: bytes) -> bytes:
    return data


async def _unary(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    if request == b"missing":
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    if request == b"broken":
        raise RuntimeError("secret document text")
    return request


async def _stream(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[bytes]:
    async for request in requests:
        if request == b"stop":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "going away")
        yield request


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


async def _calls(exporter: InMemorySpanExporter) -> list[tuple[str, grpc.StatusCode]]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    server = grpc.aio.server(interceptors=[tracing._ServerTracing(tracer)])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Unary": grpc.unary_unary_rpc_method_handler(_unary, _identity, _identity),
                    "Stream": grpc.stream_stream_rpc_method_handler(_stream, _identity, _identity),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    outcomes = []
    interceptors = [
        tracing._UnaryUnaryTracing(tracer),
        tracing._UnaryStreamTracing(tracer),
        tracing._StreamUnaryTracing(tracer),
        tracing._StreamStreamTracing(tracer),
    ]
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", interceptors=interceptors
        ) as channel:
            unary = channel.unary_unary(f"/{SERVICE}/Unary", _identity, _identity)
            stream = channel.stream_stream(f"/{SERVICE}/Stream", _identity, _identity)
            for request in (b"hello", b"missing", b"broken"):
                try:
                    await unary(request, timeout=10)
                    outcomes.append((request.decode(), grpc.StatusCode.OK))
                except grpc.aio.AioRpcError as exc:
                    outcomes.append((request.decode(), exc.code()))
            for requests in ([b"a", b"b"], [b"a", b"stop"]):
                call = stream(iter(requests), timeout=10)
                try:
                    assert [r async for r in call] == requests
                except grpc.aio.AioRpcError as exc:
                    outcomes.append(("stream", exc.code()))
                else:
                    outcomes.append(("stream", await call.code()))
            # The streaming CLIENT span ends from the call's done callback.
            await until(lambda: len(exporter.get_finished_spans()) == 10, what="ten finished spans")
    finally:
        await server.stop(None)
    return outcomes


def test_each_call_is_a_client_span_and_its_child_server_span(
    exporter: InMemorySpanExporter,
) -> None:
    outcomes = asyncio.run(asyncio.wait_for(_calls(exporter), 30))
    assert outcomes == [
        ("hello", grpc.StatusCode.OK),
        ("missing", grpc.StatusCode.NOT_FOUND),
        ("broken", grpc.StatusCode.UNKNOWN),
        ("stream", grpc.StatusCode.OK),
        ("stream", grpc.StatusCode.UNAVAILABLE),
    ]
    spans = exporter.get_finished_spans()
    clients = [s for s in spans if s.kind is SpanKind.CLIENT]
    servers = {s.parent.span_id: s for s in spans if s.kind is SpanKind.SERVER and s.parent}
    assert len(clients) == len(servers) == 5
    expected = [0, 5, 2, 0, 14]
    in_order = sorted(clients, key=lambda s: s.start_time or 0)
    for client, code in zip(in_order, expected, strict=True):
        server = servers[client.context.span_id]  # the context went out in the metadata
        assert server.context.trace_id == client.context.trace_id
        assert server.name == client.name
        assert client.attributes is not None and server.attributes is not None
        assert client.attributes["rpc.grpc.status_code"] == code
        assert server.attributes["rpc.grpc.status_code"] == code
        assert client.attributes["rpc.service"] == SERVICE
        # A client span counts every code but OK; a server span only the
        # server's own faults (NOT_FOUND is the caller's).
        assert (client.status.status_code is StatusCode.ERROR) == (code != 0)
        assert (server.status.status_code is StatusCode.ERROR) == (code in (2, 14))
    # An unexpected exception: its class, never its message.
    broken = next(s for s in spans if s.attributes and s.attributes.get("exception.type"))
    assert broken.attributes is not None
    assert broken.attributes["exception.type"] == "RuntimeError"
    assert "secret" not in repr([dict(s.attributes or {}) for s in spans])
    assert "secret" not in repr([s.status.description for s in spans])
