"""Building and running the vector gRPC server.

Start-up order (each step logged): settings -> persist-directory lock (first,
so a second service on the directory fails within seconds) -> embedding pool
warm (spawned workers, model loaded; before any gRPC object exists) -> Chroma
open and verified -> servicers, health,
reflection -> SERVING. Health stays NOT_SERVING while the pool rebuilds or
Chroma does not answer.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time

import grpc
from grpc_reflection.v1alpha import reflection

from askmojo.common import serving
from askmojo.common.health import HEALTH_SERVICE, ReadinessProbe
from askmojo.common.metrics import MetricsEndpoint
from askmojo.common.shutdown import Shutdown, step
from askmojo.vector.v1 import (
    embedding_service_pb2,
    embedding_service_pb2_grpc,
    vector_service_pb2,
    vector_service_pb2_grpc,
)
from vector_service.config import VectorSettings
from vector_service.embedding import onnx_int8
from vector_service.embedding.batcher import DynamicBatcher
from vector_service.embedding.pool import EmbeddingPool
from vector_service.embedding.tokens import TokenCounter
from vector_service.operations import Embedder, Index, ModelDescription, StoreExecutors
from vector_service.servicers import EmbeddingServicer, VectorServicer
from vector_service.store import VectorStore

_LOGGER = logging.getLogger(__name__)

EMBEDDING_SERVICE = embedding_service_pb2.DESCRIPTOR.services_by_name["EmbeddingService"].full_name
VECTOR_SERVICE = vector_service_pb2.DESCRIPTOR.services_by_name["VectorService"].full_name
_PROBE_INTERVAL_S = 1.0


def model_name(settings: VectorSettings) -> str:
    if not settings.embedding_model:
        name = "all-MiniLM-L6-v2"
    else:
        name = os.path.basename(settings.embedding_model.rstrip("/")) or settings.embedding_model
    if settings.embedding_backend == onnx_int8.BACKEND:
        return onnx_int8.served_name(name)
    return name


def start_dependencies(settings: VectorSettings) -> tuple[EmbeddingPool, VectorStore]:
    """The blocking part of start-up: warm pool, open store. Run it before any
    gRPC object exists (the pool spawns processes)."""
    store = VectorStore(settings)
    store.claim_directory()
    pool = EmbeddingPool(settings)
    try:
        pool.start()
        store.open()
    except BaseException:
        pool.shutdown()
        store.close()
        raise
    return pool, store


class VectorServer:
    """The gRPC server with everything it owns, so stopping it releases the
    pool's processes, the store and its directory lock."""

    def __init__(
        self,
        server: grpc.aio.Server,
        *,
        pool: EmbeddingPool,
        store: VectorStore,
        batcher: DynamicBatcher,
        executors: StoreExecutors,
        readiness: ReadinessProbe,
        shutdown: Shutdown,
    ) -> None:
        self.shutdown = shutdown
        self.grpc_server = server
        self.pool = pool
        self.store = store
        self.batcher = batcher
        self.readiness = readiness
        self._executors = executors

    async def start(self) -> None:
        await self.readiness.start()
        self.batcher.start()
        await self.grpc_server.start()

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop (issue #12), each step logged with its duration:
        health NOT_SERVING; no new calls; those in flight (embeddings
        included) get `grace` (default SHUTDOWN_GRACE_SECONDS), then are
        cancelled; the batcher, the store threads and the embedding worker
        processes stop; the store closes and releases its directory."""
        shutdown = self.shutdown
        shutdown.set_grace(grace)
        started = time.monotonic()
        with step("health NOT_SERVING", _LOGGER):
            await self.readiness.stop()
        hurry_timer = shutdown.begin()
        try:
            with step("in-flight calls finished or cancelled", _LOGGER):
                await shutdown.stop_grpc(self.grpc_server)
        finally:
            hurry_timer.cancel()
        with step("batcher stopped", _LOGGER):
            await self.batcher.stop()
        # Joining threads and processes blocks: not on the loop.
        with step("store threads joined", _LOGGER):
            await asyncio.to_thread(self._executors.shutdown)
        with step("embedding workers stopped", _LOGGER):
            await asyncio.to_thread(self.pool.shutdown)
        with step("store closed", _LOGGER):
            self.store.close()
        _LOGGER.info("server stopped", extra={"ms": round((time.monotonic() - started) * 1000, 1)})

    async def wait_for_termination(self) -> None:
        await self.grpc_server.wait_for_termination()


def _readiness(pool: EmbeddingPool, store: VectorStore) -> dict[str, bool]:
    """Embeddings need the pool; the index needs the pool and Chroma."""
    pool_ok = pool.ready
    try:
        store.heartbeat()
        store_ok = True
    except Exception as exc:  # any failure means "not ready"
        _LOGGER.warning("chroma heartbeat failed: %s", exc)
        store_ok = False
    both = pool_ok and store_ok
    return {"": both, EMBEDDING_SERVICE: pool_ok, VECTOR_SERVICE: both}


def create_server(
    settings: VectorSettings,
    dependencies: tuple[EmbeddingPool, VectorStore] | None = None,
    *,
    port: int | None = None,
    shutdown: Shutdown | None = None,
) -> tuple[VectorServer, int]:
    """Builds the server (not started) on `port` (default VECTOR_PORT; 0 picks
    one). Starts the pool and opens the store unless `dependencies` are given.
    Call inside the event loop that will run it."""
    pool, store = dependencies or start_dependencies(settings)
    try:
        return _build_server(
            settings, pool, store, port, shutdown or Shutdown(settings.shutdown_grace_seconds)
        )
    except BaseException:
        if dependencies is None:  # ours to release; given ones stay the caller's
            pool.shutdown()
            store.close()
        raise


def _build_server(
    settings: VectorSettings,
    pool: EmbeddingPool,
    store: VectorStore,
    port: int | None,
    shutdown: Shutdown,
) -> tuple[VectorServer, int]:
    assert pool.shape is not None
    model = ModelDescription(
        name=model_name(settings),
        dimension=pool.shape.dimension,
        max_sequence_length=pool.shape.max_sequence_length,
    )
    batcher = DynamicBatcher(
        pool,
        dimension=model.dimension,
        window=model.max_sequence_length,
        max_batch_texts=settings.max_batch_texts,
        max_batch_tokens=settings.max_batch_tokens,
        max_wait_ms=settings.max_batch_wait_ms,
        max_queued_texts=settings.max_queued_texts,
        max_in_flight=settings.max_workers,
        express_slots=settings.express_workers,
        token_counter=TokenCounter(settings.model_path, model.max_sequence_length).count,
    )
    executors = StoreExecutors.create(settings.store_threads)
    embedder = Embedder(batcher, model, settings)
    server = grpc.aio.server(
        # Beyond it gRPC refuses calls itself (RESOURCE_EXHAUSTED) before
        # they cost a task or memory here.
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
        ],
        interceptors=serving.server_interceptors(settings, "vector"),
    )
    embedding_service_pb2_grpc.add_EmbeddingServiceServicer_to_server(
        EmbeddingServicer(embedder, settings), server
    )
    vector_service_pb2_grpc.add_VectorServiceServicer_to_server(
        VectorServicer(Index(store, embedder, executors, settings)), server
    )
    readiness = ReadinessProbe(
        ("", EMBEDDING_SERVICE, VECTOR_SERVICE),
        functools.partial(_readiness, pool, store),
        interval=_PROBE_INTERVAL_S,
        timeout=5.0,
    )
    readiness.register(server)
    if settings.reflection_enabled:
        reflection.enable_server_reflection(
            (
                EMBEDDING_SERVICE,
                VECTOR_SERVICE,
                HEALTH_SERVICE,
                reflection.SERVICE_NAME,
            ),
            server,
        )
    bound = serving.listen(
        server, settings.listen_host, settings.vector_port if port is None else port, settings
    )
    return VectorServer(
        server,
        pool=pool,
        store=store,
        batcher=batcher,
        executors=executors,
        readiness=readiness,
        shutdown=shutdown,
    ), bound


async def serve(settings: VectorSettings, dependencies: tuple[EmbeddingPool, VectorStore]) -> None:
    # Signal handlers first: a SIGTERM right after "listening" must stop us
    # gracefully, not interrupt us.
    shutdown = Shutdown(settings.shutdown_grace_seconds)
    shutdown.install(asyncio.get_running_loop())
    # Before the server: its RPC interceptor is installed only while metrics are on.
    endpoint = MetricsEndpoint.start(settings.listen_host, settings.vector_metrics_port)
    server, port = create_server(settings, dependencies, shutdown=shutdown)
    await server.start()
    _LOGGER.info(
        "vector service listening",
        extra={"host": settings.listen_host, "port": port, "store": server.store.mode},
    )
    await shutdown.requested.wait()
    _LOGGER.info("vector service stopping", extra={"grace_seconds": shutdown.grace})
    await server.stop()
    if endpoint is not None:
        endpoint.stop()
    _LOGGER.info("vector service stopped")
