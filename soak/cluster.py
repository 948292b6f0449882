"""The processes of one shape, started for real, killed with SIGKILL and
started again with the same settings.

single: one metadata service (SQLite, WORKERS=2) and one vector service
(embedded Chroma). scaled: PostgreSQL (a fresh database), a `chroma run`
server, two metadata replicas and two vector replicas.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from bench.services import descendants, free_port

POSTGRES_ADMIN_URL = os.environ.get(
    "POSTGRES_TEST_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
API_KEY = "soak-key-" + "0123456789abcdef"
START_TIMEOUT = 240.0
START_ATTEMPTS = 5


def healthy(address: str, timeout: float = 1.0) -> bool:
    try:
        with grpc.insecure_channel(address) as channel:
            status = (
                health_pb2_grpc.HealthStub(channel)
                .Check(health_pb2.HealthCheckRequest(), timeout=timeout)
                .status
            )
    except grpc.RpcError:
        return False
    return bool(status == health_pb2.HealthCheckResponse.SERVING)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{what} did not happen within {timeout} s")
        time.sleep(0.2)  # polling a process coming up, not ordering events


class ExitedWhileStarting(RuntimeError):
    pass


class Process:
    """One command in its own session (so SIGKILL to its group takes its
    children along), on a fixed port, restartable."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], log: Path, port: int
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = {**os.environ, **env}
        self.log = log
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_failures: list[str] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def spawn(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=log, start_new_session=True
            )

    def ready(self) -> bool:
        return healthy(self.address)

    def start(self) -> None:
        """Starts it and waits until it serves. A process that exits while
        starting is started again, as an orchestrator would (compose's
        `restart: unless-stopped`), a few times; each such exit is recorded
        in `start_failures`."""
        for _ in range(START_ATTEMPTS):
            self.spawn()
            try:
                wait_for(self._up, START_TIMEOUT, f"{self.name} SERVING")
                return
            except ExitedWhileStarting as exc:
                self.start_failures.append(str(exc)[-600:])
        raise RuntimeError(f"{self.name} exited {START_ATTEMPTS} times while starting")

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise ExitedWhileStarting(f"{self.name} exited ({self.proc.returncode}): {tail}")
        return self.ready()

    def kill(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def children(self) -> list[int]:
        return [] if self.proc is None else descendants(self.proc.pid)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()


class ChromaServer(Process):
    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/api/v2/heartbeat", timeout=1
            ) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Running: neither gone nor a zombie waiting for its parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def living_children(process: Process) -> list[int]:
    return [pid for pid in process.children() if alive(pid)]


def embedding_workers(vector: Process) -> list[int]:
    """The vector service's embedding worker processes (spawned by
    multiprocessing; not its resource tracker)."""
    return [pid for pid in living_children(vector) if "spawn_main" in cmdline(pid)]


@dataclass
class Cluster:
    shape: str
    workdir: Path
    metadata: list[Process] = field(default_factory=list)
    vector: list[Process] = field(default_factory=list)
    chroma: ChromaServer | None = None
    database_url: str = ""
    pg_database: str | None = None
    metadata_workers: int = 1

    @property
    def metadata_address(self) -> str:
        return ",".join(p.address for p in self.metadata)

    @property
    def vector_address(self) -> str:
        return ",".join(p.address for p in self.vector)

    def engine(self) -> Engine:
        return create_engine(self.database_url, pool_pre_ping=True)

    def all_ready(self) -> bool:
        if self.chroma is not None and not self.chroma.ready():
            return False
        return all(p.ready() for p in [*self.metadata, *self.vector])


def vector_list_supported(repo: Path) -> bool:
    """Whether the metadata service takes several VECTOR_SERVICE_ADDRESSes:
    another change of issue #13, used once committed (until then, one
    address)."""
    try:
        source = subprocess.run(
            ["git", "show", "HEAD:metadata_service/vector_client.py"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        source = (repo / "metadata_service" / "vector_client.py").read_text()
    return "round_robin" in source


def _metadata_env(
    port: int, database_url: str, vector_address: str, workers: int
) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "METADATA_HOST": "127.0.0.1",
        "METADATA_PORT": str(port),
        "VECTOR_SERVICE_ADDRESS": vector_address,
        "WORKERS": str(workers),
        "API_KEY": API_KEY,
        "LOG_FORMAT": "json",
        # Short leases and polls: a killed holder's work is taken over in
        # seconds, not the default two minutes (a setting users may choose).
        "INDEX_LEASE_SECONDS": "8",
        "INDEX_POLL_SECONDS": "0.5",
        "INDEX_MAX_BACKOFF": "2",
        "INDEX_ON_WRITE_TIMEOUT": "3",
        "HEALTH_PROBE_INTERVAL": "0.5",
        "SHUTDOWN_GRACE_SECONDS": "2",
    }


def _vector_env(port: int, storage: dict[str, str]) -> dict[str, str]:
    return {
        **storage,
        "VECTOR_HOST": "127.0.0.1",
        "VECTOR_PORT": str(port),
        "MAX_WORKERS": "1",  # EMBEDDING_WORKERS=1: two cores for everything
        "EXPRESS_WORKERS": "0",
        "API_KEY": API_KEY,
        "LOG_FORMAT": "json",
        "SHUTDOWN_GRACE_SECONDS": "2",
    }


def _python(module: str) -> list[str]:
    return [sys.executable, "-m", module]


@contextlib.contextmanager
def postgres_database() -> Iterator[tuple[str, str]]:
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"askmojo_soak_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(POSTGRES_ADMIN_URL).set(database=name)
        yield url.render_as_string(hide_password=False), name
    finally:
        with contextlib.suppress(Exception), admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def postgres_reachable() -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        engine = create_engine(POSTGRES_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        return f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {type(exc).__name__}"
    return None


@contextlib.contextmanager
def running(shape: str, workdir: Path, repo: Path) -> Iterator[Cluster]:
    workdir.mkdir(parents=True, exist_ok=True)
    if shape == "single":
        cluster = Cluster(shape, workdir, metadata_workers=2)
        cluster.database_url = f"sqlite:///{workdir / 'metadata.db'}"
        port = free_port()
        cluster.vector.append(
            Process(
                "vector",
                _python("vector_service"),
                _vector_env(port, {"CHROMADB_PERSIST_DIRECTORY": str(workdir / "chroma")}),
                workdir / "vector.log",
                port,
            )
        )
        port = free_port()
        cluster.metadata.append(
            Process(
                "metadata",
                _python("metadata_service"),
                _metadata_env(port, cluster.database_url, cluster.vector_address, 2),
                workdir / "metadata.log",
                port,
            )
        )
        try:
            for p in [*cluster.vector, *cluster.metadata]:
                p.start()
            yield cluster
        finally:
            for p in [*cluster.metadata, *cluster.vector]:
                p.stop()
        return
    with postgres_database() as (url, name):
        cluster = Cluster(shape, workdir, database_url=url, pg_database=name)
        port = free_port()
        cluster.chroma = ChromaServer(
            "chroma",
            [
                str(Path(sys.executable).parent / "chroma"),
                *("run", "--path", str(workdir / "chroma"), "--port", str(port)),
            ],
            {},
            workdir / "chroma.log",
            port,
        )
        storage = {"CHROMA_HOST": "127.0.0.1", "CHROMA_PORT": str(port)}
        for i in (1, 2):
            port = free_port()
            cluster.vector.append(
                Process(
                    f"vector-{i}",
                    _python("vector_service"),
                    _vector_env(port, storage),
                    workdir / f"vector-{i}.log",
                    port,
                )
            )
        vectors = (
            cluster.vector_address if vector_list_supported(repo) else cluster.vector[0].address
        )
        for i in (1, 2):
            port = free_port()
            cluster.metadata.append(
                Process(
                    f"metadata-{i}",
                    _python("metadata_service"),
                    _metadata_env(port, url, vectors, 1),
                    workdir / f"metadata-{i}.log",
                    port,
                )
            )
        everything: list[Process] = [cluster.chroma, *cluster.vector, *cluster.metadata]
        try:
            cluster.chroma.start()
            # The replicas of each kind start together: they share the
            # engines (advisory-locked migrations, the Chroma server).
            for group in (cluster.vector, cluster.metadata):
                for p in group:
                    p.spawn()
                for p in group:
                    wait_for(p._up, START_TIMEOUT, f"{p.name} SERVING")
            yield cluster
        finally:
            for p in reversed(everything):
                p.stop()
