"""One `Search` or `IngestDocuments` call is one trace across both services
(issue #12): real `python -m vector_service` and `python -m metadata_service`
processes (the metadata service with forked workers) export over OTLP/gRPC to
a collector in the test, and the spans that arrive link up: the vector
service's SERVER span is the child of the metadata service's CLIENT span,
itself a descendant of the metadata service's SERVER span. Their JSON logs
carry the RPC method and the trace id."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.trace.v1 import trace_pb2

from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from bench.services import ServiceProcess, free_port
from tests.tracing.collector import Collector, ExportedSpan, ancestors
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

SERVER = trace_pb2.Span.SPAN_KIND_SERVER
CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT
METADATA = "askmojo.metadata.v1.MetadataService"
VECTOR = "askmojo.vector.v1.VectorService"
# Text no span or INFO log line may carry.
MARKER = "zanzibar-quokka-" + secrets.token_hex(4)


@dataclass
class Pair:
    collector: Collector
    vector: ServiceProcess
    metadata: ServiceProcess


def _otel_env(collector: Collector) -> dict[str, str]:
    clean = {k: "" for k in os.environ if k.startswith("OTEL_")}
    return {
        **clean,
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("traces")
    with Collector() as collector:
        vector_port, metadata_port = free_port(), free_port()
        vector = ServiceProcess(
            "vector_service",
            vector_port,
            {
                **_otel_env(collector),
                "CHROMADB_PERSIST_DIRECTORY": str(tmp / "chroma"),
                "VECTOR_HOST": "127.0.0.1",
                "VECTOR_PORT": str(vector_port),
                "MAX_WORKERS": "1",
                # One worker process to load the model into, not two: the
                # express lane is not what is traced here.
                "EXPRESS_WORKERS": "0",
                "LOG_LEVEL": "DEBUG",
            },
            tmp / "vector.log",
        )
        metadata = ServiceProcess(
            "metadata_service",
            metadata_port,
            {
                **_otel_env(collector),
                # Production: forked workers, each exporting on its own.
                "ENVIRONMENT": "production",
                "ALLOW_UNAUTHENTICATED": "true",
                "WORKERS": "2",
                "DATABASE_URL": f"sqlite:///{tmp / 'metadata.db'}",
                "METADATA_HOST": "127.0.0.1",
                "METADATA_PORT": str(metadata_port),
                "VECTOR_SERVICE_ADDRESS": vector.address,
                "LOG_LEVEL": "DEBUG",
            },
            tmp / "metadata.log",
        )
        with vector, metadata:
            yield Pair(collector, vector, metadata)


def _describe(collector: Collector) -> str:
    return "\n".join(map(str, collector.spans()))


def _one(spans: list[ExportedSpan], **match: object) -> ExportedSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, (match, [str(s) for s in found])
    return found[0]


def _assert_linked(collector: Collector, vector_server: ExportedSpan) -> ExportedSpan:
    """The vector SERVER span's parent is a metadata CLIENT span of the same
    method, whose ancestors include a metadata SERVER span; returns that."""
    spans = collector.spans()
    parent = _one(spans, span_id=vector_server.parent_span_id)
    assert parent.service == "askmojo-metadata" and parent.kind == CLIENT, parent
    assert parent.trace_id == vector_server.trace_id
    assert parent.name == vector_server.name
    assert parent.attributes["rpc.grpc.status_code"] == 0
    servers = [a for a in ancestors(parent, spans) if a.kind == SERVER]
    assert servers and servers[0].service == "askmojo-metadata", [str(a) for a in servers]
    return servers[0]


def _wait_for_trace(collector: Collector, metadata_method: str, vector_method: str) -> None:
    """Until the metadata service's SERVER span of `metadata_method` and,
    in its trace, both ends of its `vector_method` call have arrived (each
    process exports on its own schedule)."""
    both_ends = {("askmojo-metadata", CLIENT), ("askmojo-vector", SERVER)}

    def arrived() -> bool:
        spans = collector.spans()
        roots = [s for s in spans if s.name == metadata_method and s.kind == SERVER]
        if not roots:
            return False
        in_trace = [s for s in spans if s.trace_id == roots[0].trace_id]
        return both_ends <= {(s.service, s.kind) for s in in_trace if s.name == vector_method}

    wait_until(
        arrived,
        timeout=30,
        what=f"the spans of {metadata_method} and its {vector_method} call",
        describe=lambda: _describe(collector),
    )


def test_ingest_and_search_are_each_one_trace_across_both_services(pair: Pair) -> None:
    collector = pair.collector
    with grpc.insecure_channel(pair.metadata.address) as channel:
        stub = pb_grpc.MetadataServiceStub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(name="traced"), timeout=30)
        # IngestDocuments without a caller's context: its SERVER span is the root.
        docs = [
            pb.Document(id=f"doc-{i}", text=f"{MARKER} document {i} about harbors and lanterns.")
            for i in range(3)
        ]
        results = [
            r.state
            for response in stub.IngestDocuments(
                iter([pb.IngestDocumentsRequest(collection="traced", documents=docs)]), timeout=60
            )
            for r in response.results
        ]
        assert results == [pb.UPSERT_STATE_INDEXED] * 3
        _wait_for_trace(collector, f"{METADATA}/IngestDocuments", f"{VECTOR}/UpsertStream")
        ingest = _one(collector.spans(), name=f"{METADATA}/IngestDocuments")
        assert ingest.kind == SERVER and ingest.parent_span_id == ""
        upsert = _one(collector.spans(), name=f"{VECTOR}/UpsertStream", kind=SERVER)
        assert upsert.trace_id == ingest.trace_id
        assert _assert_linked(collector, upsert) == ingest
        assert ingest.attributes == {
            "rpc.system": "grpc",
            "rpc.service": METADATA,
            "rpc.method": "IngestDocuments",
            "rpc.grpc.status_code": 0,
        }

        # Search from a caller that sends its own trace context (W3C traceparent).
        trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
        response = stub.Search(
            pb.SearchRequest(collection="traced", query=f"{MARKER} harbors", top_k=2),
            metadata=[("traceparent", f"00-{trace_id}-{caller_span}-01")],
            timeout=60,
        )
        assert len(response.hits) == 2
        _wait_for_trace(collector, f"{METADATA}/Search", f"{VECTOR}/Query")
        search = _one(collector.spans(), name=f"{METADATA}/Search")
        assert (search.kind, search.trace_id, search.parent_span_id) == (
            SERVER,
            trace_id,
            caller_span,
        )
        query = _one(collector.spans(), name=f"{VECTOR}/Query", kind=SERVER)
        assert query.trace_id == trace_id
        assert _assert_linked(collector, query) == search

    spans = collector.spans()
    # The health probes of ServiceProcess.start are not traced.
    assert not [s for s in spans if "grpc.health" in s.name]
    # No document or query text in any span.
    assert MARKER not in repr(spans)
    assert {s.service for s in spans} == {"askmojo-metadata", "askmojo-vector"}
    # The metadata service's spans come from its forked workers (the
    # supervisor serves nothing), each exporting on its own.
    supervisor = pair.metadata.proc.pid if pair.metadata.proc else None
    metadata_pids = {s.pid for s in spans if s.service == "askmojo-metadata"}
    assert None not in metadata_pids and supervisor not in metadata_pids, metadata_pids

    # The JSON log lines written during Search carry its method and trace id,
    # in both services.
    def logged(process: ServiceProcess, method: str) -> list[dict[str, object]]:
        lines = process.log.read_text().splitlines()
        entries = [json.loads(line) for line in lines if line.startswith("{")]
        return [e for e in entries if e.get("rpc_method") == method]

    searched = ((pair.metadata, f"{METADATA}/Search"), (pair.vector, f"{VECTOR}/Query"))
    for process, method in searched:
        wait_until(lambda: logged(process, method), what=f"a log line of {method}")  # noqa: B023
        entries = logged(process, method)
        assert {e.get("trace_id") for e in entries} == {trace_id}, entries
        assert all(len(str(e["span_id"])) == 16 for e in entries)
    # No document text in any INFO (or higher) line of either service.
    for process in (pair.metadata, pair.vector):
        for line in process.log.read_text().splitlines():
            if line.startswith("{") and json.loads(line)["level"] != "debug":
                assert MARKER not in line, line


def test_a_stopping_worker_exports_what_it_still_holds(tmp_path: Path) -> None:
    """Spans still queued when a forked worker stops (its batch would go out
    in ten minutes) are exported on the way out: a worker leaves through
    os._exit, which skips atexit."""
    with Collector() as collector:
        port = free_port()
        metadata = ServiceProcess(
            "metadata_service",
            port,
            {
                **_otel_env(collector),
                "OTEL_BSP_SCHEDULE_DELAY": "600000",
                "ENVIRONMENT": "production",
                "ALLOW_UNAUTHENTICATED": "true",
                "WORKERS": "2",
                "DATABASE_URL": f"sqlite:///{tmp_path / 'metadata.db'}",
                "METADATA_HOST": "127.0.0.1",
                "METADATA_PORT": str(port),
            },
            tmp_path / "metadata.log",
        )
        with metadata, grpc.insecure_channel(metadata.address) as channel:
            stub = pb_grpc.MetadataServiceStub(channel)
            for name in ("first", "second", "third"):
                stub.CreateCollection(pb.CreateCollectionRequest(name=name), timeout=30)
            assert collector.spans() == []
        # Stopped (SIGTERM): every worker flushed its spans before exiting.
        assert metadata.proc is not None and metadata.proc.returncode == 0
        wait_until(
            lambda: len(collector.spans()) == 3,
            what="the three CreateCollection spans",
            describe=lambda: _describe(collector),
        )
        assert {s.name for s in collector.spans()} == {f"{METADATA}/CreateCollection"}
