"""Graceful shutdown (issue #12) with real processes: SIGTERM mid-stream on
either service exits 0 within SHUTDOWN_GRACE_SECONDS + a margin; every
acknowledged document is stored; nothing waits for a lease afterwards
(INDEX_LEASE_SECONDS is 600 here: a lease left behind would stall the test);
no embedding worker or production worker outlives its service."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from bench.services import ServiceProcess, descendants, free_port
from metadata_service.config import MetadataSettings
from metadata_service.server import prepare_database
from tests.conftest import RunningServer
from tests.pipeline.conftest import eventually
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

GRACE = 5.0
MARGIN = 5.0  # process exit, imports unloading, the clean-up steps
DOCUMENTS = 1200
BATCH = 40


def corpus(prefix: str = "doc") -> list[pb.Document]:
    return [
        pb.Document(
            id=f"{prefix}-{i:05d}",
            text=f"Record {i} about rivers, engines and orchards number {i * 7}.",
        )
        for i in range(DOCUMENTS)
    ]


def shutdown_log(log: Path) -> list[dict[str, object]]:
    entries = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if str(entry.get("message", "")).startswith("shutdown step") or entry.get(
                "message"
            ) in ("server stopped", "leases given back", "workers stopped"):
                entries.append(entry)
    return entries


def wait_exit(proc: ServiceProcess, within: float, signalled_at: float) -> tuple[int, float]:
    """Its exit code, and how long after the signal it came."""
    assert proc.proc is not None
    code = proc.proc.wait(max(0.1, signalled_at + within - time.monotonic()))
    return code, time.monotonic() - signalled_at


def held_leases(db: Path) -> list[tuple[str, object]]:
    """Rows whose lease has not run out (naive UTC ISO strings in SQLite)."""
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    with sqlite3.connect(db) as conn:
        rows = [
            ("chunk", r[0])
            for r in conn.execute(
                "SELECT lease_until FROM chunks WHERE lease_until IS NOT NULL AND lease_until > ?",
                (now,),
            )
        ]
        rows += [
            ("deletion", r[0])
            for r in conn.execute(
                "SELECT lease_until FROM vector_deletions "
                "WHERE lease_until IS NOT NULL AND lease_until > ?",
                (now,),
            )
        ]
    return rows


def by_state(stub: pb_grpc.MetadataServiceStub, collection: str) -> dict[int, int]:
    stats = stub.GetStats(pb.GetStatsRequest(collection=collection))
    return {s.state: s.count for s in stats.documents_by_state if s.count}


def test_sigterm_mid_ingest_stream_stores_every_acknowledged_document(
    tmp_path: Path, vector_server: RunningServer
) -> None:
    port = free_port()
    db = tmp_path / "metadata.db"
    metadata = ServiceProcess(
        "metadata_service",
        port,
        {
            "DATABASE_URL": f"sqlite:///{db}",
            "METADATA_HOST": "127.0.0.1",
            "METADATA_PORT": str(port),
            "VECTOR_SERVICE_ADDRESS": vector_server.address,
            "INDEX_LEASE_SECONDS": "600",
            "INDEX_POLL_SECONDS": "0.2",
            "INGEST_BATCHES_IN_FLIGHT": "4",
            "SHUTDOWN_GRACE_SECONDS": str(GRACE),
        },
        tmp_path / "metadata.log",
    )
    docs = corpus()
    metadata.start()
    try:
        acked: dict[str, int] = {}
        with grpc.insecure_channel(metadata.address) as channel:
            stub = pb_grpc.MetadataServiceStub(channel)
            stub.CreateCollection(pb.CreateCollectionRequest(name="graceful"))

            def requests() -> Iterator[pb.IngestDocumentsRequest]:
                for start in range(0, len(docs), BATCH):
                    yield pb.IngestDocumentsRequest(
                        collection="graceful", documents=docs[start : start + BATCH]
                    )

            signalled_at = 0.0
            with pytest.raises(grpc.RpcError) as ended:
                for response in stub.IngestDocuments(requests(), timeout=300):
                    acked.update((r.id, r.state) for r in response.results)
                    if len(acked) >= 3 * BATCH and not signalled_at:
                        assert metadata.proc is not None
                        metadata.proc.send_signal(signal.SIGTERM)
                        signalled_at = time.monotonic()
            code, took = wait_exit(metadata, GRACE + MARGIN, signalled_at)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE, ended.value.details()
        assert "shutting down" in (ended.value.details() or "")
        assert code == 0
        print(f"metadata service stopped in {took:.2f} s: {shutdown_log(metadata.log)}")
        assert 3 * BATCH <= len(acked) < DOCUMENTS
        assert set(acked.values()) <= {pb.UPSERT_STATE_INDEXED, pb.UPSERT_STATE_PENDING}

        # Straight from the database: every acknowledged document stored
        # with its text, and no row holds a lease.
        with sqlite3.connect(db) as conn:
            stored = dict(conn.execute("SELECT external_id, text FROM documents"))
        texts = {d.id: d.text for d in docs}
        assert all(stored.get(i) == texts[i] for i in acked)
        assert held_leases(db) == []

        metadata.start()
        with grpc.insecure_channel(metadata.address) as channel:
            stub = pb_grpc.MetadataServiceStub(channel)
            # INDEX_LEASE_SECONDS is 600: this holds only because nothing
            # waits for a lease.
            eventually(
                lambda: by_state(stub, "graceful") == {pb.DOCUMENT_STATE_INDEXED: len(stored)},
                timeout=120,
                what="every stored document INDEXED after the restart",
                describe=lambda: by_state(stub, "graceful"),
            )
            some = sorted(acked)[-1]
            got = stub.GetDocument(pb.GetDocumentRequest(collection="graceful", id=some))
            assert got.text == texts[some]
    finally:
        metadata.stop()


def test_sigterm_mid_embedding_stops_the_vector_service_and_its_workers(
    tmp_path: Path, settings: MetadataSettings
) -> None:
    port = free_port()
    vector = ServiceProcess(
        "vector_service",
        port,
        {
            "CHROMADB_PERSIST_DIRECTORY": str(tmp_path / "chroma"),
            "VECTOR_HOST": "127.0.0.1",
            "VECTOR_PORT": str(port),
            "MAX_WORKERS": "1",
            "SHUTDOWN_GRACE_SECONDS": str(GRACE),
        },
        tmp_path / "vector.log",
    )
    vector.start()
    paired = settings.model_copy(
        update={
            "vector_service_address": vector.address,
            "index_poll_seconds": 0.2,
            "index_max_backoff": 0.5,
            "index_lease_seconds": 600,
        }
    )
    prepare_database(paired)
    docs = corpus("emb")
    try:
        assert vector.proc is not None
        workers = descendants(vector.proc.pid)
        assert workers, "the embedding pool has worker processes"
        with (
            RunningServer.metadata(paired) as running,
            grpc.insecure_channel(running.address) as channel,
        ):
            stub = pb_grpc.MetadataServiceStub(channel)
            stub.CreateCollection(pb.CreateCollectionRequest(name="emb"))
            first_ack = threading.Event()
            errors: list[BaseException] = []

            def ingest() -> None:
                try:
                    for start in range(0, len(docs), BATCH):
                        stub.UpsertDocuments(
                            pb.UpsertDocumentsRequest(
                                collection="emb", documents=docs[start : start + BATCH]
                            ),
                            timeout=120,
                        )
                        first_ack.set()
                except BaseException as exc:  # reported by the test thread
                    errors.append(exc)

            writer = threading.Thread(target=ingest)
            writer.start()
            assert first_ack.wait(120), "no batch was acknowledged"
            vector.proc.send_signal(signal.SIGTERM)  # embeddings are in flight
            code, took = wait_exit(vector, GRACE + MARGIN, time.monotonic())
            print(f"vector service stopped in {took:.2f} s: {shutdown_log(vector.log)}")
            assert code == 0
            wait_until(
                lambda: not any(_alive(pid) for pid in workers),
                timeout=5,
                what="every embedding worker gone",
            )
            writer.join(300)
            assert not errors, errors
            # Stored, waiting for the vector service: PENDING, never FAILED.
            states = by_state(stub, "emb")
            assert pb.DOCUMENT_STATE_FAILED not in states
            assert pb.DOCUMENT_STATE_PENDING in states
            vector.start()
            eventually(
                lambda: by_state(stub, "emb") == {pb.DOCUMENT_STATE_INDEXED: DOCUMENTS},
                timeout=180,
                what="every document INDEXED once the vector service is back",
                describe=lambda: by_state(stub, "emb"),
            )
    finally:
        vector.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose (its parent has exited; init reaps it).
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False


def test_production_supervisor_stops_every_worker_on_sigterm(tmp_path: Path) -> None:
    from tests.metadata_service.test_workers import start_service, wait_serving

    service = start_service(
        {
            "ENVIRONMENT": "production",
            "ALLOW_UNAUTHENTICATED": "true",
            "WORKERS": "2",
            "METADATA_PORT": "0",
            "METADATA_HOST": "127.0.0.1",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'metadata.db'}",
            "LOG_FORMAT": "json",
            "HEALTH_PROBE_INTERVAL": "0.2",
            "SHUTDOWN_GRACE_SECONDS": str(GRACE),
        },
        tmp_path,
    )
    try:
        wait_serving(service.address)
        workers = {int(str(e["worker_pid"])) for e in service.logged("worker started")}
        assert len(workers) == 2
        started = time.monotonic()
        service.proc.send_signal(signal.SIGTERM)
        code = service.proc.wait(GRACE + 2 * MARGIN)
        took = time.monotonic() - started
        service.drain.join(10)
        print(f"supervisor stopped in {took:.2f} s")
        assert code == 0
        for pid in workers:
            assert not _alive(pid)
        assert service.logged("workers stopped")
    finally:
        if service.proc.poll() is None:
            service.proc.kill()
            service.proc.wait()
