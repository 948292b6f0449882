"""`python -m metadata_service` in production mode: forked workers sharing one
port, many writer processes at once, clean shutdown."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from askmojo.common.v1 import common_pb2 as common
from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from tests.waiting import wait_until

CLIENTS = 4
CALLS_PER_CLIENT = 250


class ServiceProcess:
    def __init__(self, proc: subprocess.Popen[str], port: int, log: list[str]) -> None:
        self.proc, self.port, self.log = proc, port, log
        # Keep draining stderr, or a full pipe would block the service.
        self.drain = threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
        self.drain.start()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signals the service, waits for it, and returns its exit code once
        every log line it wrote has been read."""
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=30)
        self.drain.join(10)
        return code

    def logged(self, message: str) -> list[dict[str, object]]:
        entries = [json.loads(line) for line in list(self.log) if line.startswith("{")]
        return [e for e in entries if e["message"] == message]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def start_service(env: dict[str, str], cwd: Path) -> ServiceProcess:
    proc = subprocess.Popen(
        [sys.executable, "-m", "metadata_service"],
        cwd=cwd,
        env={**os.environ, **env},
        stderr=subprocess.PIPE,
        text=True,
    )
    log: list[str] = []
    deadline = time.monotonic() + 60
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        log.append(line)
        entry = json.loads(line)
        if entry["message"] == "metadata service listening":
            return ServiceProcess(proc, int(entry["port"]), log)
    proc.kill()
    raise AssertionError("service did not start:\n" + "".join(log))


@pytest.fixture
def production_service(tmp_path: Path) -> Iterator[ServiceProcess]:
    service = start_service(
        {
            "ENVIRONMENT": "production",
            # Production refuses to start without API_KEY otherwise (tests/auth).
            "ALLOW_UNAUTHENTICATED": "true",
            "WORKERS": "2",
            "METADATA_PORT": "0",
            "METADATA_HOST": "127.0.0.1",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'metadata.db'}",
            "LOG_FORMAT": "json",
            "HEALTH_PROBE_INTERVAL": "0.2",
        },
        tmp_path,
    )
    try:
        yield service
    finally:
        if service.proc.poll() is None:
            service.proc.kill()  # workers follow (PR_SET_PDEATHSIG)
            service.proc.wait()


@pytest.mark.slow
def test_workers_die_with_a_killed_supervisor(production_service: ServiceProcess) -> None:
    wait_serving(production_service.address)
    workers = {int(e["worker_pid"]) for e in production_service.logged("worker started")}  # type: ignore[call-overload]
    assert len(workers) == 2
    production_service.proc.kill()
    production_service.proc.wait()
    wait_until(
        lambda: not any(_running(pid) for pid in workers),
        timeout=15,
        what="every worker gone",
        describe=lambda: f"orphaned workers: {[p for p in workers if _running(p)]}",
    )


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def wait_serving(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        def serving() -> bool:
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
            except grpc.RpcError:
                return False
            return reply.status == health_pb2.HealthCheckResponse.SERVING

        wait_until(serving, timeout=30, what="the service SERVING")


CHANNELS_PER_CLIENT = 4


def client_process(address: str, client: int, calls: int) -> tuple[list[str], set[int]]:
    """One client process firing all its calls at once over a few separate
    connections (SO_REUSEPORT balances connections, not calls); returns the
    errors and the worker pids that served it."""
    channels = [
        grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(CHANNELS_PER_CLIENT)
    ]
    stubs = [pb_grpc.MetadataServiceStub(channel) for channel in channels]
    try:
        futures = [
            stubs[i % len(stubs)].UpsertDocuments.future(
                pb.UpsertDocumentsRequest(
                    collection="load",
                    documents=[
                        pb.Document(
                            id=f"client{client}-{i:04d}",
                            text=f"Document {i} of client {client}. " * 20,
                            metadata={"client": common.MetadataValue(int_value=client)},
                        )
                    ],
                ),
                timeout=120,
            )
            for i in range(calls)
        ]
        errors = []
        for future in futures:
            try:
                result = future.result().results[0]
                if result.status.code != 0:
                    errors.append(result.status.message)
            except grpc.RpcError as exc:
                errors.append(f"{exc.code()}: {exc.details()}")  # type: ignore[attr-defined]
        pids = {stub.GetStats(pb.GetStatsRequest()).worker_pid for stub in stubs}
        return errors, pids
    finally:
        for channel in channels:
            channel.close()


@pytest.mark.slow
def test_two_workers_four_writer_processes(
    production_service: ServiceProcess, tmp_path: Path
) -> None:
    address = production_service.address
    wait_serving(address)
    with grpc.insecure_channel(address) as channel:
        pb_grpc.MetadataServiceStub(channel).CreateCollection(
            pb.CreateCollectionRequest(name="load")
        )

    # Spawned, not forked: the test process already holds gRPC state.
    context = multiprocessing.get_context("spawn")
    with context.Pool(CLIENTS) as pool:
        results = pool.starmap(
            client_process, [(address, client, CALLS_PER_CLIENT) for client in range(CLIENTS)]
        )
    errors = [error for result_errors, _ in results for error in result_errors]
    assert errors == [], errors[:5]
    served_by = set().union(*(pids for _, pids in results))
    worker_pids = {int(e["worker_pid"]) for e in production_service.logged("worker started")}  # type: ignore[call-overload]
    assert len(worker_pids) == 2
    assert served_by == worker_pids, "both workers should have taken connections"

    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.MetadataServiceStub(channel)
        collection = stub.GetCollection(pb.GetCollectionRequest(name="load"))
        assert collection.document_count == CLIENTS * CALLS_PER_CLIENT

    with sqlite3.connect(tmp_path / "metadata.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        expected = {f"client{c}-{i:04d}" for c in range(CLIENTS) for i in range(CALLS_PER_CLIENT)}
        assert {row[0] for row in db.execute("SELECT external_id FROM documents")} == expected
        assert db.execute("SELECT count(*) FROM chunks WHERE state = 'PENDING'").fetchone()[0] > 0

    # SIGTERM stops the supervisor and every worker, cleanly.
    assert production_service.stop() == 0
    for pid in worker_pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.slow
def test_a_killed_worker_is_replaced(production_service: ServiceProcess) -> None:
    address = production_service.address
    wait_serving(address)
    first = {int(e["worker_pid"]) for e in production_service.logged("worker started")}  # type: ignore[call-overload]
    victim = min(first)
    os.kill(victim, signal.SIGKILL)

    def started() -> set[int]:
        return {int(e["worker_pid"]) for e in production_service.logged("worker started")}  # type: ignore[call-overload]

    wait_until(lambda: started() - first, timeout=30, what="a worker started after the kill")
    replacement = started() - first
    assert len(replacement) == 1, "the supervisor did not start a replacement worker"
    assert production_service.logged("worker died; replacing it")
    # The replacement serves: new connections reach only live workers.
    wait_serving(address)
    seen = set()
    for _ in range(20):
        with grpc.insecure_channel(
            address, options=[("grpc.use_local_subchannel_pool", 1)]
        ) as channel:
            stub = pb_grpc.MetadataServiceStub(channel)
            seen.add(stub.GetStats(pb.GetStatsRequest(), timeout=10).worker_pid)
    assert victim not in seen
    assert seen <= (first - {victim}) | replacement
    assert production_service.stop() == 0
