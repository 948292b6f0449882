"""Building, running and supervising the metadata gRPC server.

Start-up order (each step logged): settings -> database engine -> Alembic
upgrade (once, in the parent) -> worker processes (production) -> per worker:
engine, servicer, health, reflection -> health SERVING once the database
answers at the newest schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_reflection.v1alpha import reflection
from sqlalchemy.exc import OperationalError

from askmojo.common import serving
from askmojo.common.channels import ClientSecurity
from askmojo.common.health import HEALTH_SERVICE, ReadinessProbe
from askmojo.common.metrics import MetricsEndpoint
from askmojo.common.shutdown import Shutdown, step
from askmojo.metadata.v1 import metadata_service_pb2, metadata_service_pb2_grpc
from metadata_service import migrations
from metadata_service.catalog import Catalog
from metadata_service.config import MetadataSettings
from metadata_service.db.clock import HostClock
from metadata_service.db.engine import Database, build_engine
from metadata_service.errors import is_outage
from metadata_service.indexing import Indexer
from metadata_service.metrics import OutboxBacklog
from metadata_service.outbox import Outbox
from metadata_service.pipeline import Pipeline
from metadata_service.servicer import MetadataServicer
from metadata_service.vector_client import VectorClient

_LOGGER = logging.getLogger(__name__)

SERVICE_NAME = metadata_service_pb2.DESCRIPTOR.services_by_name["MetadataService"].full_name
_PR_SET_PDEATHSIG = 1
# The supervisor's wait beyond a worker's grace (its clean-up: leases given
# back, pools closed) before it kills the worker.
_STOP_MARGIN_S = 5.0


# Attempts at migrating when the database drops or refuses the connection (a
# restart, a failover, backends terminated): a replica starting at that moment
# waits a few seconds for it instead of exiting (found by the crash soak).
PREPARE_ATTEMPTS = 5
PREPARE_PAUSE_SECONDS = 1.0


def prepare_database(settings: MetadataSettings) -> None:
    """Brings the schema to the newest revision. Run once per deployment step,
    before worker processes exist (they must not migrate concurrently)."""
    for attempt in range(1, PREPARE_ATTEMPTS + 1):
        try:
            _migrate(settings)
            return
        except OperationalError as exc:
            if attempt == PREPARE_ATTEMPTS or not is_outage(exc):
                raise
            _LOGGER.warning(
                "database unavailable while migrating; retrying",
                extra={"attempt": attempt, "error": str(exc.orig)[:300]},
            )
            time.sleep(PREPARE_PAUSE_SECONDS * attempt)


def _migrate(settings: MetadataSettings) -> None:
    engine = build_engine(settings)
    try:
        _LOGGER.info("database engine ready", extra={"url": _safe_url(settings)})
        migrations.upgrade(engine)
    finally:
        # No pooled connection may survive into a forked worker.
        engine.dispose()


class MetadataServer:
    """A gRPC server together with what it owns (engine, thread pool, health),
    so stopping it releases everything."""

    def __init__(
        self,
        server: grpc.aio.Server,
        database: Database,
        executor: ThreadPoolExecutor,
        readiness: ReadinessProbe,
        *,
        shutdown: Shutdown,
        indexer: Indexer | None = None,
        vector_client: VectorClient | None = None,
    ) -> None:
        self.grpc_server = server
        self.database = database
        self.readiness = readiness
        self.shutdown = shutdown
        self.indexer = indexer
        self._vector_client = vector_client
        self._executor = executor

    async def start(self) -> None:
        # Leases are timed by the database's clock (db/clock.py): measured
        # here, off the loop, so handing one out never queries on it.
        try:
            await asyncio.to_thread(self.database.clock.refresh_if_due)
        except Exception as exc:  # the database is down: measured on first use
            _LOGGER.warning("database clock not measured at start-up: %s", exc)
        await self.readiness.start()
        await self.grpc_server.start()
        if self.indexer is not None:
            # Resumes whatever PENDING work a previous run left behind.
            self.indexer.start()

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop (issue #12), each step logged with its duration:
        health NOT_SERVING; no new calls; those in flight get `grace`
        (default SHUTDOWN_GRACE_SECONDS) to finish, then are cancelled;
        the indexer stops; every lease this process holds is given back;
        the pools and the database close."""
        shutdown = self.shutdown
        shutdown.set_grace(grace)
        started = time.monotonic()
        with step("health NOT_SERVING", _LOGGER):
            await self.readiness.stop()
        hurry_timer = shutdown.begin()
        try:
            finishing = None
            if self.indexer is not None:
                # The pass running may finish within the grace; no new one starts.
                finishing = asyncio.ensure_future(self.indexer.stop(shutdown.hurry))
            with step("in-flight calls finished or cancelled", _LOGGER):
                await shutdown.stop_grpc(self.grpc_server)
            with step("indexer stopped", _LOGGER):
                if finishing is not None:
                    await finishing  # at the latest when the grace runs out
        finally:
            hurry_timer.cancel()
        if self._vector_client is not None:
            with step("vector client closed", _LOGGER):
                await self._vector_client.close()
        # Joining threads blocks: not on the loop. Work already queued (the
        # settling of cancelled calls) still runs.
        with step("database threads joined", _LOGGER):
            await asyncio.to_thread(self._executor.shutdown, wait=True)
        if self.indexer is not None:
            with step("leases given back", _LOGGER):
                chunks, deletions = await self.indexer.give_back_leases()
            _LOGGER.info("leases given back", extra={"chunks": chunks, "deletions": deletions})
        with step("database closed", _LOGGER):
            await asyncio.to_thread(self.database.dispose)
        _LOGGER.info("server stopped", extra={"ms": round((time.monotonic() - started) * 1000, 1)})

    async def wait_for_termination(self) -> None:
        await self.grpc_server.wait_for_termination()


def _database_readiness(database: Database) -> dict[str, bool]:
    """SERVING only while the database answers and its schema is current."""
    database.ping()
    ready = migrations.is_up_to_date(database.engine)
    if not ready:
        _LOGGER.warning("database schema is not at the newest revision; run migrations")
    return {"": ready, SERVICE_NAME: ready}


def create_server(
    settings: MetadataSettings,
    *,
    port: int | None = None,
    shutdown: Shutdown | None = None,
    host_clock: HostClock | None = None,
) -> tuple[MetadataServer, int]:
    """Builds the server bound to `port` (default: METADATA_PORT; 0 picks a
    free one) without starting it. Call inside the event loop that will run it.
    `shutdown`: the stop signals' state (serve_worker's), else one of its own.
    `host_clock`: stands in for this host's clock (tests skew it); leases
    follow the database's clock whatever it says."""
    shutdown = shutdown or Shutdown(settings.shutdown_grace_seconds)
    database = Database.from_settings(settings, host_clock=host_clock)
    executor = ThreadPoolExecutor(
        max_workers=settings.effective_db_threads, thread_name_prefix="metadata-db"
    )
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            # Worker processes share one port and the kernel spreads
            # connections; a single process must own its port, so a second
            # `make run` fails to bind instead of silently taking half the calls.
            ("grpc.so_reuseport", 1 if settings.worker_count > 1 else 0),
        ],
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        interceptors=serving.server_interceptors(settings, "metadata"),
    )
    catalog = Catalog(database, settings)
    vector_client = indexer = None
    if settings.vector_service_address:
        vector_client = VectorClient(
            settings.vector_service_address,
            settings.max_message_bytes,
            sent_limits=settings.sent_to_vector_service,
            security=ClientSecurity(
                api_key=settings.vector_service_key,
                ca_file=settings.vector_service_ca_file,
                cert_file=settings.vector_service_client_cert_file,
                key_file=settings.vector_service_client_key_file,
            ),
        )
        indexer = Indexer(database, vector_client, executor, settings)
    pipeline = Pipeline(
        catalog,
        Outbox(database),
        executor,
        settings,
        indexer=indexer,
        client=vector_client,
        shutdown=shutdown,
    )
    metadata_service_pb2_grpc.add_MetadataServiceServicer_to_server(
        MetadataServicer(catalog, pipeline, executor, settings), server
    )
    readiness = ReadinessProbe(
        ("", SERVICE_NAME),
        functools.partial(_database_readiness, database),
        interval=settings.health_probe_interval,
        timeout=settings.health_probe_interval + 5,
    )
    readiness.register(server)
    if settings.reflection_enabled:
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                HEALTH_SERVICE,
                reflection.SERVICE_NAME,
            ),
            server,
        )
    bound = serving.listen(
        server,
        settings.listen_host,
        settings.metadata_port if port is None else port,
        settings,
    )
    return MetadataServer(
        server,
        database,
        executor,
        readiness,
        shutdown=shutdown,
        indexer=indexer,
        vector_client=vector_client,
    ), bound


async def serve_worker(settings: MetadataSettings, port: int | None = None) -> None:
    """Runs one server until SIGINT/SIGTERM, then stops it gracefully."""
    # Signal handlers first: a SIGTERM right after start-up must stop us
    # gracefully, not interrupt us.
    shutdown = Shutdown(settings.shutdown_grace_seconds)
    shutdown.install(asyncio.get_running_loop())
    server, bound = create_server(settings, port=port, shutdown=shutdown)
    await server.start()
    _LOGGER.info(
        "worker serving",
        extra={
            "port": bound,
            "reflection": settings.reflection_enabled,
            "db_threads": settings.effective_db_threads,
        },
    )
    if port is None:
        _log_listening(settings, bound, 1)
    await shutdown.requested.wait()
    _LOGGER.info("worker stopping", extra={"grace_seconds": settings.shutdown_grace_seconds})
    await server.stop()


def run(settings: MetadataSettings) -> int:
    """The whole service: migrate, then one in-process server (development)
    or a supervisor of `WORKERS` forked servers on one port (production)."""
    prepare_database(settings)
    workers = settings.worker_count
    # Before any worker is forked: in multiprocess mode they record into the
    # endpoint's directory, and one scrape of it sums them.
    endpoint = MetricsEndpoint.start(
        settings.listen_host, settings.metadata_metrics_port, multiprocess=workers > 1
    )
    if endpoint is not None:
        # Asked at scrape time by the process serving it: one value, not one per worker.
        endpoint.register(OutboxBacklog(settings))
    try:
        if workers == 1:
            asyncio.run(serve_worker(settings))
            return 0
        return _supervise(settings, workers, endpoint)
    finally:
        if endpoint is not None:
            endpoint.stop()


def _log_listening(settings: MetadataSettings, port: int, workers: int) -> None:
    _LOGGER.info(
        "metadata service listening",
        extra={"host": settings.listen_host, "port": port, "workers": workers},
    )


@contextlib.contextmanager
def _reserved_port(host: str, port: int) -> Iterator[int]:
    """Holds the port (picking one when 0) with SO_REUSEPORT so workers can
    bind it too; the socket never listens, so it never takes a connection."""
    ipv6 = ":" in host or host in ("[::]", "")
    sock = socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host.strip("[]") or "::", port))
        yield sock.getsockname()[1]
    finally:
        sock.close()


def _die_with_supervisor(supervisor: int) -> None:
    """Linux: have the kernel send SIGTERM to this worker when its supervisor
    dies, even by SIGKILL, so no worker is ever orphaned."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: best effort only
        return
    if os.getppid() != supervisor:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _worker_main(settings: MetadataSettings, port: int, supervisor: int) -> None:
    # The child inherits the supervisor's handlers; until serve_worker installs
    # its own, SIGTERM must simply end it. SIGINT comes from the supervisor
    # as SIGTERM: a Ctrl-C reaching the whole process group directly too
    # would count as a second signal (a hurried stop).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_supervisor(supervisor)
    asyncio.run(serve_worker(settings, port))


def _supervise(settings: MetadataSettings, workers: int, endpoint: MetricsEndpoint | None) -> int:
    """Forks the workers (before any gRPC object exists in this process, as
    gRPC requires) and replaces any that die, until SIGINT/SIGTERM."""
    context = multiprocessing.get_context("fork")
    stopping = False
    signals = 0
    procs: list[multiprocessing.process.BaseProcess] = []

    def _stop(_signum: int, _frame: object) -> None:
        nonlocal stopping, signals
        stopping = True
        signals += 1
        if signals > 1:
            # A second signal: passed on, the workers hurry (see shutdown.py).
            _LOGGER.warning("second stop signal; passed on to the workers")
            _signal_workers(procs)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with _reserved_port(settings.listen_host, settings.metadata_port) as port:
        restarts: list[float] = []

        def _spawn(index: int) -> multiprocessing.process.BaseProcess:
            proc = context.Process(
                target=_worker_main,
                args=(settings, port, os.getpid()),
                name=f"metadata-worker-{index}",
            )
            proc.start()
            _LOGGER.info("worker started", extra={"worker": index, "worker_pid": proc.pid})
            return proc

        procs.extend(_spawn(i) for i in range(workers))
        _log_listening(settings, port, workers)
        exit_code = 0
        while not stopping:
            time.sleep(0.2)
            for index, proc in enumerate(procs):
                if proc.is_alive() or stopping:
                    continue
                _LOGGER.error(
                    "worker died; replacing it",
                    extra={"worker": index, "worker_pid": proc.pid, "exitcode": proc.exitcode},
                )
                if endpoint is not None and proc.pid is not None:
                    endpoint.worker_exited(proc.pid)
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < 60] + [now]
                if len(restarts) > 5 * workers:
                    _LOGGER.critical("workers keep dying; giving up")
                    stopping, exit_code = True, 1
                    break
                procs[index] = _spawn(index)
        exit_code = max(exit_code, _stop_workers(procs, settings.shutdown_grace_seconds))
    _LOGGER.info("metadata service stopped", extra={"exitcode": exit_code})
    return exit_code


def _signal_workers(procs: list[multiprocessing.process.BaseProcess]) -> None:
    for proc in procs:
        if proc.is_alive() and proc.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)


def _stop_workers(procs: list[multiprocessing.process.BaseProcess], grace: float) -> int:
    """SIGTERM to every worker, then grace + a margin for them to stop
    (their calls, then their clean-up); stragglers are killed. 0 when every
    worker stopped cleanly, else 1."""
    started = time.monotonic()
    _LOGGER.info("stopping workers", extra={"workers": len(procs), "grace_seconds": grace})
    _signal_workers(procs)
    deadline = started + grace + _STOP_MARGIN_S
    exit_code = 0
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            _LOGGER.error("worker did not stop in time; killed", extra={"worker_pid": proc.pid})
            proc.kill()
            proc.join()
            exit_code = 1
        # -SIGTERM: stopped before its handlers were installed (it held nothing).
        elif proc.exitcode not in (0, -signal.SIGTERM):
            _LOGGER.error(
                "worker stopped with an error",
                extra={"worker_pid": proc.pid, "exitcode": proc.exitcode},
            )
            exit_code = 1
    _LOGGER.info(
        "workers stopped",
        extra={"ms": round((time.monotonic() - started) * 1000, 1), "exitcode": exit_code},
    )
    return exit_code


def _safe_url(settings: MetadataSettings) -> str:
    from sqlalchemy.engine import make_url

    return make_url(settings.database_url).render_as_string(hide_password=True)
