"""Shared fixtures: real SQLite files (and PostgreSQL when reachable), real
servers on port 0 over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from askmojo.metadata.v1 import metadata_service_pb2_grpc
from metadata_service.config import MetadataSettings
from metadata_service.server import create_server, prepare_database
from vector_service.config import VectorSettings
from vector_service.embedding.pool import EmbeddingPool
from vector_service.server import create_server as create_vector_server
from vector_service.store import VectorStore

POSTGRES_ADMIN_URL = os.environ.get(
    "POSTGRES_TEST_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def metadata_settings(database: Path, **overrides: object) -> MetadataSettings:
    """The metadata service alone on a SQLite file, on a free local port;
    tests/pipeline/ pairs it with a vector service."""
    values: dict[str, object] = {
        "database_url": sqlite_url(database),
        "metadata_port": 0,
        "metadata_host": "127.0.0.1",
        "health_probe_interval": 0.2,
        "vector_service_address": "",
        **overrides,
    }
    # _env_file=None: tests never read a developer's .env.
    return MetadataSettings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path) -> MetadataSettings:
    return metadata_settings(tmp_path / "metadata.db")


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; skips when the server
    is unreachable so `make test` passes on a laptop without PostgreSQL."""
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"askmojo_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {type(exc).__name__}")
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def postgres_lock_waiters(url: str) -> int:
    """How many sessions of `url`'s database wait for a lock right now: how a
    race test knows a transaction is blocked where it means it to be."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                ).scalar_one()
            )
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend_settings(
    request: pytest.FixtureRequest, settings: MetadataSettings
) -> Iterator[MetadataSettings]:
    """The same settings on each storage backend: a SQLite file, then PostgreSQL."""
    if request.param == "sqlite":
        yield settings
        return
    with postgres_database() as url:
        yield settings.model_copy(update={"database_url": url})


class RunningServer:
    """A gRPC server (from `create`, e.g. a create_server partial) on its own
    event-loop thread, bound to a free port."""

    def __init__(self, create: Callable[[], tuple[Any, int]], settings: Any = None) -> None:
        self.settings = settings
        self.server: Any = None
        self.port = 0
        self._create = create
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    @classmethod
    def metadata(cls, settings: MetadataSettings) -> RunningServer:
        return cls(lambda: create_server(settings), settings)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        try:
            self.server, self.port = self._create()
            await self.server.start()
            self._stop = asyncio.Event()
        except BaseException as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        await self._stop.wait()
        await self.server.stop(1.0)

    def __enter__(self) -> RunningServer:
        self._thread.start()
        self._started.wait(300)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def server(settings: MetadataSettings) -> Iterator[RunningServer]:
    prepare_database(settings)
    with RunningServer.metadata(settings) as running:
        yield running


@pytest.fixture
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        yield ch


@pytest.fixture
def stub(channel: grpc.Channel) -> metadata_service_pb2_grpc.MetadataServiceStub:
    return metadata_service_pb2_grpc.MetadataServiceStub(channel)


def vector_settings(persist: Path, **overrides: object) -> VectorSettings:
    values: dict[str, object] = {
        "chromadb_persist_directory": str(persist),
        "vector_port": 0,
        "vector_host": "127.0.0.1",
        "max_workers": 1,
        "max_message_bytes": 4 * 1024 * 1024,
        "max_queued_texts": 700,
        **overrides,
    }
    return VectorSettings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def vector_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One warm vector service (the pool loads the model in ~10 s) shared by
    every test of the session that needs one."""
    settings = vector_settings(tmp_path_factory.mktemp("vector") / "chroma")
    with RunningServer(lambda: create_vector_server(settings), settings) as running:
        yield running


# Settings a lent pool cannot honour: they shape the pool's worker processes.
_POOL_SETTINGS = frozenset(
    {
        "max_workers",
        "express_workers",
        "torch_threads",
        "bulk_nice",
        "embedding_model",
        "embedding_backend",
        "model_cache_dir",
    }
)


class _LentPool:
    """The session vector service's warm embedding pool, lent to another
    server: stopping that server leaves the pool to its owner."""

    def __init__(self, pool: EmbeddingPool) -> None:
        self._pool = pool

    def shutdown(self) -> None:
        """Nothing: the session's vector service stops the pool."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


def on_lent_pool(owner: RunningServer, settings: VectorSettings) -> Callable[[], tuple[Any, int]]:
    """What creates a vector service of its own (its own Chroma directory,
    server, keys, TLS files, metrics interceptor...) on `owner`'s warm
    embedding pool: the real server and model, without loading the model
    again (10-25 s a load). The embedding settings stay the owner's."""
    assert all(
        getattr(settings, name) == getattr(owner.settings, name) for name in _POOL_SETTINGS
    ), "a lent pool keeps the owner's workers"
    pool = cast("EmbeddingPool", _LentPool(owner.server.pool))

    def create() -> tuple[Any, int]:
        store = VectorStore(settings)
        store.claim_directory()
        store.open()
        return create_vector_server(settings, (pool, store))

    return create


def vector_server_on_pool(
    owner: RunningServer, persist: Path, **overrides: object
) -> RunningServer:
    """vector_settings(persist, **overrides) served on `owner`'s warm pool
    (on_lent_pool)."""
    settings = vector_settings(persist, **overrides)
    return RunningServer(on_lent_pool(owner, settings), settings)
