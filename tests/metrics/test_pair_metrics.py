"""/metrics of the real pair (one process here, real sockets, real model and
Chroma): after real calls, the families, labels and counts are those the
calls must have produced."""

from __future__ import annotations

import concurrent.futures
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from askmojo.common.metrics import MetricsEndpoint
from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from askmojo.vector.v1 import embedding_service_pb2 as epb
from askmojo.vector.v1 import embedding_service_pb2_grpc as epb_grpc
from askmojo.vector.v1 import vector_service_pb2 as vpb
from askmojo.vector.v1 import vector_service_pb2_grpc as vpb_grpc
from metadata_service.metrics import OutboxBacklog
from metadata_service.server import prepare_database
from tests.conftest import RunningServer, metadata_settings, vector_server_on_pool
from tests.metrics.scrape import Scrape, delta, prefixed, scrape
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "askmojo.json"
METADATA = "askmojo.metadata.v1.MetadataService"
VECTOR = "askmojo.vector.v1.VectorService"
EMBEDDING = "askmojo.vector.v1.EmbeddingService"
TEXTS = {
    "sqlite": "SQLite keeps the whole database in one file and writes through a WAL.",
    "grpc": "gRPC multiplexes calls over HTTP/2 streams with flow control.",
    "cats": "Cats sleep most of the day and hunt at dusk.",
}


@dataclass
class Pair:
    endpoint: MetricsEndpoint
    metadata: pb_grpc.MetadataServiceStub
    vectors: vpb_grpc.VectorServiceStub
    embedding: epb_grpc.EmbeddingServiceStub
    channel: grpc.Channel

    def scrape(self) -> Scrape:
        return scrape(self.endpoint.port)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, vector_server: RunningServer) -> Iterator[Pair]:
    """Metrics on (the endpoint first: servers built while it runs get the
    RPC interceptor), then the vector service (on the session's warm
    embedding pool), then the metadata service."""
    directory = tmp_path_factory.mktemp("metrics-pair")
    endpoint = MetricsEndpoint.listen("127.0.0.1", 0)
    try:
        with vector_server_on_pool(vector_server, directory / "chroma") as vector:
            paired = metadata_settings(
                directory / "metadata.db",
                vector_service_address=vector.address,
                index_poll_seconds=0.2,
                index_max_backoff=0.5,
            )
            prepare_database(paired)
            # max_age=0: every scrape asks, so a test sees its own writes.
            endpoint.register(OutboxBacklog(paired, max_age=0))
            with (
                RunningServer.metadata(paired) as metadata,
                grpc.insecure_channel(metadata.address) as channel,
                grpc.insecure_channel(vector.address) as vector_channel,
            ):
                yield Pair(
                    endpoint,
                    pb_grpc.MetadataServiceStub(channel),
                    vpb_grpc.VectorServiceStub(vector_channel),
                    epb_grpc.EmbeddingServiceStub(vector_channel),
                    channel,
                )
    finally:
        endpoint.stop()


def collection(pair: Pair) -> str:
    name = f"docs-{uuid.uuid4().hex[:8]}"
    pair.metadata.CreateCollection(pb.CreateCollectionRequest(name=name))
    return name


def ingest(pair: Pair, name: str, texts: dict[str, str]) -> None:
    requests = iter(
        [
            pb.IngestDocumentsRequest(
                collection=name, documents=[pb.Document(id=k, text=v) for k, v in texts.items()]
            )
        ]
    )
    responses = list(pair.metadata.IngestDocuments(requests, timeout=120))
    assert [r.id for response in responses for r in response.results] == list(texts)


def code_of(call: object) -> grpc.StatusCode:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_rpcs_are_counted_by_service_method_and_code(pair: Pair) -> None:
    before = pair.scrape()
    name = collection(pair)
    bad_name = code_of(lambda: pair.metadata.CreateCollection(pb.CreateCollectionRequest(name="")))
    missing = code_of(lambda: pair.metadata.GetCollection(pb.GetCollectionRequest(name="nope")))
    assert (bad_name, missing) == (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    ingest(pair, name, TEXTS)  # a bidirectional stream, and calls to the vector service
    unknown = pair.channel.unary_unary(f"/{METADATA}/NoSuchMethod")
    assert code_of(lambda: unknown(b"")) == grpc.StatusCode.UNIMPLEMENTED
    after = pair.scrape()

    handled = "askmojo_rpc_handled_total"

    def calls(method: str, code: str, service: str = METADATA) -> float:
        return delta(
            after, before, handled, grpc_service=service, grpc_method=method, grpc_code=code
        )

    assert calls("CreateCollection", "OK") == 1
    assert calls("CreateCollection", "INVALID_ARGUMENT") == 1
    assert calls("GetCollection", "NOT_FOUND") == 1
    assert calls("IngestDocuments", "OK") == 1
    # The ingest reached the vector service, whose server counted it too.
    vector_calls = delta(after, before, handled, grpc_service=VECTOR, grpc_code="OK")
    assert vector_calls >= 1
    # Methods the server does not have are not labels (callers choose them).
    assert "NoSuchMethod" not in after.label_values(handled, "grpc_method")
    # One latency observation per call, whatever its outcome.
    duration = "askmojo_rpc_duration_seconds_count"
    assert delta(after, before, duration, grpc_method="CreateCollection") == 2
    assert delta(after, before, duration, grpc_method="IngestDocuments") == 1
    buckets = after.series("askmojo_rpc_duration_seconds_bucket", grpc_method="IngestDocuments")
    assert {labels["le"] for labels, _ in buckets} >= {"0.001", "1.0", "+Inf"}
    # Nothing is in flight once the calls answered.
    assert after.series("askmojo_rpc_in_flight", grpc_service=METADATA)
    assert after.value("askmojo_rpc_in_flight", grpc_service=METADATA) == 0
    # Codes are status code names; methods those of the descriptors.
    codes = after.label_values(handled, "grpc_code")
    assert codes <= {c.name for c in grpc.StatusCode}
    services = pb.DESCRIPTOR.services_by_name["MetadataService"]
    methods = {labels["grpc_method"] for labels, _ in after.series(handled, grpc_service=METADATA)}
    assert methods <= {m.name for m in services.methods}


def test_embedding_is_measured_by_lane(pair: Pair) -> None:
    before = pair.scrape()
    singles = [f"query number {i} about sqlite and grpc" for i in range(16)]
    with concurrent.futures.ThreadPoolExecutor(len(singles)) as pool:
        list(
            pool.map(
                lambda text: pair.embedding.Embed(epb.EmbedRequest(texts=[text]), timeout=60),
                singles,
            )
        )
    streamed = [[f"passage {b}.{i} " + "word " * (5 + 7 * i) for i in range(6)] for b in range(3)]
    requests = iter(
        [epb.EmbedStreamRequest(texts=texts, batch_id=str(b)) for b, texts in enumerate(streamed)]
    )
    assert len(list(pair.embedding.EmbedStream(requests, timeout=120))) == len(streamed)
    after = pair.scrape()

    bulk_texts = sum(len(t) for t in streamed)
    for lane, texts in (("interactive", len(singles)), ("bulk", bulk_texts)):
        assert delta(after, before, "askmojo_embedding_texts_total", lane=lane) == texts, lane
        tokens = delta(after, before, "askmojo_embedding_tokens_total", lane=lane)
        assert tokens > texts, lane  # every text is several tokens
        batches = delta(after, before, "askmojo_embedding_batch_texts_count", lane=lane)
        assert 1 <= batches <= texts, lane
        assert delta(after, before, "askmojo_embedding_batch_texts_sum", lane=lane) == texts
        padded = delta(after, before, "askmojo_embedding_batch_padded_tokens_sum", lane=lane)
        assert padded >= tokens, lane  # padding only ever adds
        busy = delta(after, before, "askmojo_embedding_worker_busy_seconds_total", lane=lane)
        assert busy > 0, lane
        timed = delta(after, before, "askmojo_embedding_batch_duration_seconds_count", lane=lane)
        assert timed == batches, lane
        # Read at scrape time: nothing waits or runs once the calls answered.
        assert after.series("askmojo_embedding_queued_texts", lane=lane), lane
        assert after.value("askmojo_embedding_queued_texts", lane=lane) == 0
        assert after.value("askmojo_embedding_batches_in_flight", lane=lane) == 0
    assert after.value("askmojo_embedding_workers", kind="regular") >= 1
    assert after.value("askmojo_embedding_queue_capacity_texts") >= 700
    assert after.series("askmojo_embedding_pool_restarts_total", reason="BrokenProcessPool")
    assert (
        delta(after, before, "askmojo_rpc_handled_total", grpc_service=EMBEDDING, grpc_code="OK")
        == len(singles) + 1
    )


def test_store_database_outbox_and_reconcile(pair: Pair) -> None:
    name = collection(pair)
    before = pair.scrape()
    ingest(pair, name, TEXTS)
    hits = pair.metadata.Search(pb.SearchRequest(collection=name, query="HTTP/2"), timeout=60)
    assert hits.hits
    # A vector lost behind the metadata service's back: Reconcile re-indexes it.
    vector_collection = pair.metadata.GetCollection(
        pb.GetCollectionRequest(name=name)
    ).vector_collection
    pair.vectors.Delete(vpb.DeleteRequest(collection=vector_collection, ids=["grpc#0"]))
    fixed = pair.metadata.Reconcile(pb.ReconcileRequest(collection=name), timeout=120)
    assert fixed.missing_vectors == 1
    dry = pair.metadata.Reconcile(pb.ReconcileRequest(collection=name, dry_run=True), timeout=120)
    assert dry.missing_vectors == 0
    after = pair.scrape()

    # Chroma calls by operation (never by collection).
    chroma = "askmojo_chroma_call_duration_seconds_count"
    for operation in ("upsert", "query", "delete", "list_ids", "get"):
        assert delta(after, before, chroma, operation=operation) >= 1, operation
    assert "operation" in after.series(chroma)[0][0]
    assert all(set(labels) == {"operation"} for labels, _ in after.series(chroma))
    # Reconcile's repairs; the dry run repaired nothing.
    repairs = "askmojo_reconcile_repairs_total"
    assert delta(after, before, repairs, kind="missing") == 1
    assert delta(after, before, repairs, kind="orphan") == 0
    assert after.label_values(repairs, "kind") == {"orphan", "stale", "missing", "resumed"}
    # The database: pool gauges, writer waits and group commits (SQLite).
    assert after.label_values("askmojo_db_pool_connections", "state") == {
        "checked_out",
        "overflow",
    }
    assert after.value("askmojo_db_pool_connections", state="checked_out") >= 0
    wait = "askmojo_sqlite_writer_wait_seconds_count"
    assert delta(after, before, wait, wait="thread") >= 1
    assert delta(after, before, wait, wait="process") >= 1
    units = delta(after, before, "askmojo_sqlite_group_commit_units_sum")
    transactions = delta(after, before, "askmojo_sqlite_group_commit_units_count")
    assert units >= transactions >= 1
    # The outbox, asked at scrape time: everything indexed, nothing waits.
    wait_until(
        lambda: pair.scrape().value("askmojo_outbox_chunks", state="PENDING") == 0,
        timeout=30,
        what="the outbox drained",
    )
    drained = pair.scrape()
    assert drained.label_values("askmojo_outbox_chunks", "state") == {"PENDING", "FAILED"}
    assert drained.value("askmojo_outbox_oldest_pending_age_seconds") == 0
    assert drained.series("askmojo_outbox_deletions")


_IDENTIFIER = re.compile(r"\baskmojo_[a-z0-9_]+")


def dashboard_metrics() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs: list[str] = []

    def walk(panels: list[dict[str, object]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):  # type: ignore[attr-defined]
                exprs.append(target["expr"])
            walk(panel.get("panels", []))  # type: ignore[arg-type]

    walk(dashboard["panels"])
    assert exprs
    return {name for expr in exprs for name in _IDENTIFIER.findall(expr)}


def test_the_dashboard_queries_only_exported_metrics(pair: Pair) -> None:
    """Every metric a panel of deploy/grafana's dashboard queries is one the
    services export (a scrape of the running pair), by its sample name."""
    exported = prefixed(pair.scrape().names)
    referenced = dashboard_metrics()
    assert not referenced - exported, sorted(referenced - exported)
    # And the dashboard shows every family the services export.
    families = {re.sub(r"_(bucket|sum|count|total)$", "", name) for name in exported}
    shown = {re.sub(r"_(bucket|sum|count|total)$", "", name) for name in referenced}
    assert not families - shown, sorted(families - shown)
