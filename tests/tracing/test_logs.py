"""Log records written while a call is served name its method
(`rpc_method`), tracing on or off, and carry the current span's trace and
span ids when there is one (issue #12)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from askmojo.common.logs import RPC_METHOD, CallContextFilter, JsonFormatter, TextFormatter
from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from metadata_service.server import prepare_database
from tests.conftest import RunningServer, metadata_settings

METADATA = "askmojo.metadata.v1.MetadataService"


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """The root logger writing JSON lines through the production handler's
    filter, at DEBUG (the per-call "rpc ok"/"rpc failed" lines)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(CallContextFilter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _entries(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_lines_written_during_a_call_name_its_method(
    tmp_path: Path, json_lines: io.StringIO
) -> None:
    settings = metadata_settings(tmp_path / "metadata.db")
    prepare_database(settings)
    with (
        RunningServer.metadata(settings) as running,
        grpc.insecure_channel(running.address) as channel,
    ):
        stub = pb_grpc.MetadataServiceStub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(name="logged"), timeout=30)
        with pytest.raises(grpc.RpcError):
            stub.GetCollection(pb.GetCollectionRequest(name="missing"), timeout=30)
        list(
            stub.IngestDocuments(
                iter(
                    [
                        pb.IngestDocumentsRequest(
                            collection="logged", documents=[pb.Document(id="a", text="text")]
                        )
                    ]
                ),
                timeout=30,
            )
        )
    logging.getLogger("tests").info("outside any call")
    entries = _entries(json_lines)
    by_rpc = {e["rpc"]: e for e in entries if e["message"] in ("rpc ok", "rpc failed")}
    # Unary, failed unary (the line is written as the status is set), stream.
    for rpc in ("CreateCollection", "GetCollection", "IngestDocuments"):
        assert by_rpc[rpc]["rpc_method"] == f"{METADATA}/{rpc}", by_rpc[rpc]
        # Tracing is off: no span, no ids.
        assert "trace_id" not in by_rpc[rpc] and "span_id" not in by_rpc[rpc]
    assert by_rpc["GetCollection"]["code"] == "NOT_FOUND"
    outside = [e for e in entries if e["message"] == "outside any call"]
    assert len(outside) == 1 and "rpc_method" not in outside[0]
    assert RPC_METHOD.get() is None


def test_the_current_span_gives_trace_and_span_ids() -> None:
    tracer = TracerProvider().get_tracer("test")
    record = logging.makeLogRecord({"msg": "inside", "levelno": logging.INFO})
    token = RPC_METHOD.set(f"{METADATA}/Search")
    try:
        with tracer.start_as_current_span("call") as span:
            assert CallContextFilter().filter(record)
    finally:
        RPC_METHOD.reset(token)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["trace_id"] == f"{span.get_span_context().trace_id:032x}"
    assert entry["span_id"] == f"{span.get_span_context().span_id:016x}"
    assert entry["rpc_method"] == f"{METADATA}/Search"
    # The development format shows them too.
    assert f"trace_id={entry['trace_id']}" in TextFormatter().format(record)
