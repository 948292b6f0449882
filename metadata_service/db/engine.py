"""The SQLAlchemy engine and the units of work the service layer runs on it.

SQLite (the default) is tuned as the seed app did it: WAL, synchronous=NORMAL,
a 64 MB cache, 256 MB of mmap, temp tables in memory and a busy timeout, all
set on every new connection. Two things go further:

* Write transactions open with `BEGIN IMMEDIATE`. A deferred transaction that
  reads first and writes later can hit "database is locked" at once, without
  waiting, when another writer got in between (SQLite cannot wait for a lock
  upgrade without risking deadlock). Taking the write lock up front means the
  busy timeout always applies.
* Writers queue for their turn instead of polling in SQLite's busy handler,
  and concurrent ones share a transaction (group commit): see
  `sqlite_writers.py`.

Any other SQLAlchemy URL (PostgreSQL) gets the same pool settings and none of
the SQLite specifics.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from askmojo.common import metrics
from askmojo.common.logs import exception_summary
from metadata_service import metrics as service_metrics
from metadata_service.config import MetadataSettings
from metadata_service.db.clock import DatabaseClock, HostClock
from metadata_service.db.sqlite_writers import SQLiteWriters
from metadata_service.domain import PoolStatus, StorageStatus

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")

# Execution option read by the "begin" listener: which BEGIN to emit.
_BEGIN_MODE = "askmojo_sqlite_begin"
_WRITE_ATTEMPTS = 5


def build_engine(settings: MetadataSettings) -> Engine:
    """Creates the pooled engine. Call it in the process that will use it
    (after any fork): pooled connections must never cross a fork."""
    url = make_url(settings.database_url)
    pool_args: dict[str, Any] = {
        "pool_size": settings.pool_size,
        "max_overflow": settings.max_overflow,
        "pool_pre_ping": settings.pool_pre_ping,
        "pool_recycle": settings.pool_recycle,
        # An error's text then carries the statement but not its values (a
        # long IN list, document text); logs bound the statement too (logs.py).
        "hide_parameters": True,
    }
    if url.get_backend_name() != "sqlite":
        return _watch_pool(create_engine(url, **pool_args))

    if url.database and url.database != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(url.database)), exist_ok=True)
    engine = create_engine(
        url,
        connect_args={
            "timeout": settings.sqlite_timeout,
            # Connections move between the pool's threads, never two at once.
            "check_same_thread": False,
        },
        **pool_args,
    )
    pragmas = (
        "PRAGMA journal_mode=WAL",
        f"PRAGMA synchronous={settings.sqlite_synchronous}",
        f"PRAGMA cache_size=-{settings.sqlite_cache_size_kib}",
        f"PRAGMA mmap_size={settings.sqlite_mmap_size}",
        f"PRAGMA temp_store={settings.sqlite_temp_store}",
        f"PRAGMA busy_timeout={int(settings.sqlite_timeout * 1000)}",
        "PRAGMA foreign_keys=ON",
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy's "begin" event below: the
        # sqlite3 module's own implicit BEGIN is always DEFERRED.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # journal_mode=WAL persists in the file: an existing rollback-journal
            # database is converted here, in place, on its first connection.
            for pragma in pragmas:
                cursor.execute(pragma)
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get(_BEGIN_MODE, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return _watch_pool(engine)


def _watch_pool(engine: Engine) -> Engine:
    """Pool gauges (askmojo_db_pool_connections) kept at each checkout and
    checkin, when metrics are on as the engine is built."""
    if metrics.enabled():
        service_metrics.watch_pool(engine)
    return engine


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def _is_retryable(exc: DBAPIError) -> bool:
    """Errors that a fresh attempt of the same transaction can cure."""
    # Not "database is locked": SQLite already waited SQLITE_TIMEOUT for it, and
    # waiting that long again would only multiply the caller's delay. Not other
    # integrity errors either (NOT NULL, foreign keys): those are bugs.
    return getattr(exc.orig, "sqlstate", None) in _RETRYABLE_SQLSTATES


# PostgreSQL: unique violation (two transactions inserting the same new key
# under READ COMMITTED; on retry the row exists and the work becomes an
# update), serialization failure, deadlock.
_RETRYABLE_SQLSTATES = frozenset({"23505", "40001", "40P01"})


class Database:
    """The engine plus sessions: one session per unit of work, never shared
    across threads. Repository functions take the session; this class owns
    begin/commit/rollback."""

    def __init__(
        self, engine: Engine, *, lock_timeout: float = 20.0, host_clock: HostClock | None = None
    ) -> None:
        self.engine = engine
        # What leases are timed by (clock.py); `host_clock` stands in for
        # this host's clock (tests skew it).
        self.clock = DatabaseClock.of(engine, host_clock)
        self._sqlite = is_sqlite(engine)
        # PostgreSQL reads see one snapshot for the whole unit of work (a
        # document and its metadata, loaded by two statements, always agree);
        # SQLite's read transactions are snapshots already.
        reader = (
            engine if self._sqlite else engine.execution_options(isolation_level="REPEATABLE READ")
        )
        self._read_sessions = sessionmaker(reader, expire_on_commit=False)
        writer = engine.execution_options(**{_BEGIN_MODE: "IMMEDIATE"}) if self._sqlite else engine
        self._write_sessions = sessionmaker(writer, expire_on_commit=False)
        database = engine.url.database
        lock_path = (
            f"{os.path.abspath(database)}-writer.lock"
            if self._sqlite and database and database != ":memory:"
            else None
        )
        self._writers = SQLiteWriters(lock_path, lock_timeout) if self._sqlite else None

    @classmethod
    def from_settings(
        cls, settings: MetadataSettings, *, host_clock: HostClock | None = None
    ) -> Database:
        return cls(
            build_engine(settings), lock_timeout=settings.sqlite_timeout, host_clock=host_clock
        )

    def dispose(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def session_scope(self, *, write: bool = False) -> Iterator[Session]:
        """A session in one transaction, for background work and scripts."""
        maker = self._write_sessions if write else self._read_sessions
        turn = self._writers.turn() if write and self._writers else contextlib.nullcontext()
        with turn, maker() as session, session.begin():
            yield session

    def read(self, work: Callable[[Session], T]) -> T:
        with self.session_scope() as session:
            return work(session)

    def write(self, work: Callable[[Session], T]) -> T:
        """Runs `work` in a write transaction: on SQLite one shared with the
        writes other threads queued meanwhile, each in a savepoint of its own
        (see sqlite_writers.py); elsewhere its own, retried on serialization
        failures, deadlocks and insert races (bounded, with jitter). `work`
        may therefore run more than once, and in another thread."""
        if self._writers is not None:
            return self._writers.run(work, self._write_transaction)
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                with self._write_transaction() as session:
                    return work(session)
            except DBAPIError as exc:
                if attempt == _WRITE_ATTEMPTS or not _is_retryable(exc):
                    raise
                delay = 0.01 * 2**attempt * (0.5 + random.random())
                _LOGGER.debug(
                    "write transaction retried",
                    extra={"attempt": attempt, "error": exception_summary(exc), "delay_s": delay},
                )
                time.sleep(delay)
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def _write_transaction(self) -> Iterator[Session]:
        with self._write_sessions() as session, session.begin():
            yield session

    def group_commit_status(self) -> tuple[int, int]:
        """(transactions, units of work) written so far by this process, on
        SQLite; their ratio is how many writes share a commit."""
        if self._writers is None:
            return 0, 0
        return self._writers.transactions, self._writers.units

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def pool_status(self) -> PoolStatus:
        pool: Any = self.engine.pool

        def _count(name: str) -> int:
            method = getattr(pool, name, None)
            return int(method()) if callable(method) else 0

        return PoolStatus(
            pool_class=type(pool).__name__,
            size=_count("size"),
            checked_out=_count("checkedout"),
            checked_in=_count("checkedin"),
            # QueuePool reports negative overflow while connections are still
            # uncreated; users want "connections beyond pool_size".
            overflow=max(0, _count("overflow")),
            max_overflow=int(getattr(pool, "_max_overflow", 0)),
        )

    def storage_status(self) -> StorageStatus:
        url = self.engine.url
        if not self._sqlite:
            size = 0
            if self.engine.dialect.name == "postgresql":
                with self.engine.connect() as conn:
                    query = text("SELECT pg_database_size(current_database())")
                    size = int(conn.execute(query).scalar() or 0)
            return StorageStatus(self.engine.dialect.name, size, 0, "")
        path = url.database or ""
        with self.engine.connect() as conn:
            mode = str(conn.exec_driver_sql("PRAGMA journal_mode").scalar())
        transactions, writes = self.group_commit_status()
        return StorageStatus(
            "sqlite",
            _file_size(path),
            _file_size(f"{path}-wal"),
            mode.lower(),
            write_transactions=transactions,
            writes=writes,
        )


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
