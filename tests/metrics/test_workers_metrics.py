"""`python -m metadata_service` with WORKERS=2: one scrape of the supervisor's
endpoint sees the calls every worker handled, a killed worker's counts stay
and its live gauges go, the outbox backlog is one value, and the metrics
directory of the run is gone once the service stopped."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from tests.metrics.scrape import Scrape, free_port, scrape
from tests.waiting import wait_until

METADATA = "askmojo.metadata.v1.MetadataService"
CHANNELS = 16
CALLS_PER_CHANNEL = 5


class Service:
    def __init__(self, proc: subprocess.Popen[str], metrics_port: int) -> None:
        self.proc = proc
        self.metrics_port = metrics_port
        self.log: list[dict[str, object]] = []
        self._lines = threading.Event()
        # Keep draining stderr, or a full pipe would block the service.
        self._drain = threading.Thread(target=self._read, daemon=True)
        self._drain.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if line.startswith("{"):
                self.log.append(json.loads(line))

    def logged(self, message: str) -> list[dict[str, object]]:
        return [entry for entry in list(self.log) if entry["message"] == message]

    def scrape(self) -> Scrape:
        return scrape(self.metrics_port)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    metrics_port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "metadata_service"],
        cwd=tmp_path,
        env={
            **os.environ,
            "ENVIRONMENT": "production",
            "ALLOW_UNAUTHENTICATED": "true",
            "WORKERS": "2",
            "METADATA_PORT": "0",
            "METADATA_HOST": "127.0.0.1",
            "METADATA_METRICS_PORT": str(metrics_port),
            "DATABASE_URL": f"sqlite:///{tmp_path / 'metadata.db'}",
            # Away: ingested chunks stay PENDING, a backlog to measure.
            "VECTOR_SERVICE_ADDRESS": "127.0.0.1:1",
            "LOG_FORMAT": "json",
            "HEALTH_PROBE_INTERVAL": "0.2",
        },
        stderr=subprocess.PIPE,
        text=True,
    )
    running = Service(proc, metrics_port)
    try:
        # The supervisor says "listening" as it forks; each worker says when it serves.
        wait_until(
            lambda: len(running.logged("worker serving")) == 2 or proc.poll() is not None,
            timeout=60,
            what="both workers serving",
        )
        assert proc.poll() is None, running.log
        yield running
    finally:
        if proc.poll() is None:
            proc.kill()  # workers follow (PR_SET_PDEATHSIG)
            proc.wait()


def handled(scraped: Scrape, **labels: str) -> float:
    return scraped.value("askmojo_rpc_handled_total", grpc_service=METADATA, **labels)


def handled_by(directory: Path, pid: int) -> float:
    """The calls one worker counted, from its own file alone."""
    path = directory / f"counter_{pid}.db"
    if not path.exists():
        return 0.0
    return sum(
        sample.value
        for metric in MultiProcessCollector.merge([str(path)])  # type: ignore[no-untyped-call]
        for sample in metric.samples
        if sample.name == "askmojo_rpc_handled_total"
        and sample.labels.get("grpc_service") == METADATA
    )


def test_one_scrape_sees_every_worker(service: Service, tmp_path: Path) -> None:
    (listening,) = service.logged("metadata service listening")
    address = f"127.0.0.1:{listening['port']}"
    workers = [int(e["worker_pid"]) for e in service.logged("worker started")]  # type: ignore[call-overload]
    (endpoint,) = service.logged("metrics endpoint listening")
    directory = Path(str(endpoint["directory"]))
    assert directory.is_dir()

    # Connections of their own (no shared subchannel), which SO_REUSEPORT
    # spreads over the workers.
    channels = [
        grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(CHANNELS)
    ]
    try:
        stubs = [pb_grpc.MetadataServiceStub(channel) for channel in channels]
        stubs[0].CreateCollection(pb.CreateCollectionRequest(name="docs"))
        response = stubs[0].UpsertDocuments(
            pb.UpsertDocumentsRequest(
                collection="docs",
                documents=[pb.Document(id=f"d{i}", text=f"document {i}") for i in range(5)],
            ),
            timeout=60,
        )
        assert {r.state for r in response.results} == {pb.UPSERT_STATE_PENDING}
        for stub in stubs:
            for _ in range(CALLS_PER_CHANNEL):
                stub.ListCollections(pb.ListCollectionsRequest(), timeout=10)
    finally:
        for channel in channels:
            channel.close()
    calls = 2 + CHANNELS * CALLS_PER_CHANNEL

    # Every worker handled some of the calls (each records in files of its own) ...
    by_worker = {pid: handled_by(directory, pid) for pid in workers}
    assert all(count > 0 for count in by_worker.values()), by_worker
    assert sum(by_worker.values()) == calls
    # ... and one scrape sums them all.
    scraped = service.scrape()
    assert handled(scraped) == calls
    assert handled(scraped, grpc_method="ListCollections", grpc_code="OK") == CHANNELS * 5
    assert scraped.value("askmojo_rpc_duration_seconds_count", grpc_service=METADATA) == calls
    assert scraped.value("askmojo_rpc_in_flight", grpc_service=METADATA) == 0
    # The outbox backlog is asked once, by the supervisor: one value, the database's.
    with sqlite3.connect(tmp_path / "metadata.db") as db:
        (pending,) = db.execute("SELECT count(*) FROM chunks WHERE state = 'PENDING'").fetchone()
    assert pending >= 5
    assert [value for _, value in scraped.series("askmojo_outbox_chunks", state="PENDING")] == [
        pending
    ]
    assert len(scraped.series("askmojo_outbox_oldest_pending_age_seconds")) == 1
    assert scraped.value("askmojo_outbox_oldest_pending_age_seconds") > 0
    assert scraped.value("askmojo_worker_restarts_total") == 0

    # A worker killed: the supervisor replaces it; its counts stay in the
    # sums, its live gauges (the pool's) stop counting.
    victim = workers[0]
    assert (directory / f"gauge_livesum_{victim}.db").exists()
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: service.scrape().value("askmojo_worker_restarts_total") == 1,
        timeout=20,
        what="the restart counted",
    )
    assert not (directory / f"gauge_livesum_{victim}.db").exists()
    assert handled(service.scrape()) == calls

    # A clean stop removes the run's directory.
    service.proc.send_signal(signal.SIGTERM)
    assert service.proc.wait(timeout=30) == 0
    assert not directory.exists()
