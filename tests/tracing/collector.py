"""An OTLP/gRPC trace collector in the test process: the services under test
export to it as to any collector, and the test reads what arrived."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as tpb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as tpb_grpc
from opentelemetry.proto.common.v1 import common_pb2


@dataclass(frozen=True)
class ExportedSpan:
    service: str
    pid: int | None
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    status_code: int

    def __str__(self) -> str:
        return (
            f"{self.service}[{self.pid}] {self.name} kind={self.kind} "
            f"trace={self.trace_id} span={self.span_id} parent={self.parent_span_id or '-'}"
        )


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind is not None else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


class Collector(tpb_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[ExportedSpan] = []
        self._server = grpc.server(ThreadPoolExecutor(max_workers=4))
        tpb_grpc.add_TraceServiceServicer_to_server(self, self._server)  # type: ignore[no-untyped-call]
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    def Export(
        self, request: tpb.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> tpb.ExportTraceServiceResponse:
        received = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ExportedSpan(
                            service=str(resource.get("service.name")),
                            pid=resource.get("process.pid"),
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes=_attributes(span.attributes),
                            status_code=span.status.code,
                        )
                    )
        with self._lock:
            self._spans.extend(received)
        return tpb.ExportTraceServiceResponse()

    def spans(self) -> list[ExportedSpan]:
        with self._lock:
            return list(self._spans)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Collector:
        self._server.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.stop(None)


def ancestors(span: ExportedSpan, spans: list[ExportedSpan]) -> Iterator[ExportedSpan]:
    """The span's parent, its parent's parent, ... as far as they arrived."""
    by_id = {s.span_id: s for s in spans if s.trace_id == span.trace_id}
    current = by_id.get(span.parent_span_id)
    while current is not None:
        yield current
        current = by_id.get(current.parent_span_id)
