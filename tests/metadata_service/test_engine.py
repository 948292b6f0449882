"""The engine keeps the seed's SQLite tuning, and then some (DESIGN.md §5)."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from metadata_service import migrations
from metadata_service.config import MetadataSettings
from metadata_service.db.engine import Database, build_engine
from metadata_service.db.sqlite_writers import DatabaseBusy
from metadata_service.server import prepare_database


def test_pragmas_and_pool_follow_settings(tmp_path: Path) -> None:
    settings = MetadataSettings(
        _env_file=None,
        database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        pool_size=7,
        max_overflow=3,
        sqlite_timeout=12.5,
        sqlite_cache_size_kib=2048,
        sqlite_mmap_size=1 << 20,
    )
    engine = build_engine(settings)
    with engine.connect() as conn:
        pragma = {
            name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in (
                "journal_mode",
                "synchronous",
                "cache_size",
                "mmap_size",
                "temp_store",
                "busy_timeout",
                "foreign_keys",
            )
        }
    assert pragma == {
        "journal_mode": "wal",
        "synchronous": 1,  # NORMAL
        "cache_size": -2048,  # negative: KiB
        "mmap_size": 1 << 20,
        "temp_store": 2,  # MEMORY
        "busy_timeout": 12500,
        "foreign_keys": 1,
    }
    pool = engine.pool
    assert (pool.size(), pool._max_overflow, pool._pre_ping, pool._recycle) == (7, 3, True, 3600)  # type: ignore[attr-defined]
    engine.dispose()


def test_seed_defaults() -> None:
    settings = MetadataSettings(_env_file=None)
    assert settings.pool_size >= 5
    assert (settings.max_overflow, settings.pool_recycle, settings.sqlite_timeout) == (20, 3600, 20)
    assert settings.sqlite_cache_size_kib * 1024 == 64 * 1024 * 1024
    assert settings.sqlite_mmap_size == 256 * 1024 * 1024
    assert settings.database_url == "sqlite:///./data/metadata.db"
    assert settings.worker_count == 1
    production = MetadataSettings(_env_file=None, environment="production")
    assert production.worker_count >= 1 and not production.reflection_enabled
    assert production.effective_log_format == "json"


def test_existing_rollback_journal_database_is_converted_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        assert old.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        old.execute("CREATE TABLE legacy (id INTEGER PRIMARY KEY, note TEXT)")
        old.executemany("INSERT INTO legacy (note) VALUES (?)", [("a",), ("b",)])
    engine = build_engine(MetadataSettings(_env_file=None, database_url=f"sqlite:///{path}"))
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT note FROM legacy ORDER BY id").scalars().all() == [
            "a",
            "b",
        ]
    engine.dispose()
    with sqlite3.connect(path) as reopened:
        assert reopened.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_write_transactions_take_the_write_lock_up_front(settings: MetadataSettings) -> None:
    """A write transaction holds SQLite's RESERVED lock from its BEGIN, before
    it writes anything: another writer cannot slip in between and turn a later
    lock upgrade into an instant "database is locked"."""
    prepare_database(settings)
    db = Database.from_settings(settings)
    path = settings.database_url.removeprefix("sqlite:///")
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        with db.session_scope(write=True) as session:
            session.execute(text("SELECT 1"))  # a read only: no write yet
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")  # released at commit
        other.execute("ROLLBACK")
        # Reads stay deferred: they never block a writer.
        with db.session_scope() as session:
            session.execute(text("SELECT 1"))
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
    finally:
        other.close()
        db.dispose()


def test_writers_wait_instead_of_failing(settings: MetadataSettings) -> None:
    """Another process holding the write lock makes writers wait (busy
    timeout), not fail."""
    prepare_database(settings)
    db = Database.from_settings(settings)
    path = settings.database_url.removeprefix("sqlite:///")
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.5, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        db.write(
            lambda s: s.execute(
                text(
                    "INSERT INTO collections (name, description, "
                    "embedding_model, embedding_dimension, chunk_size, chunk_overlap, created_at) "
                    "VALUES ('waited', '', 'm', 3, 100, 10, '2026-01-01')"
                )
            )
        )
    finally:
        release.join()
        holder.close()
    assert db.read(lambda s: s.execute(text("SELECT count(*) FROM collections")).scalar()) == 1
    db.dispose()


# Another writer process of the same service, holding its turn for `seconds`.
_LOCK_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


@contextlib.contextmanager
def _lock_held_by_another_process(
    settings: MetadataSettings, seconds: float
) -> Iterator[subprocess.Popen[str]]:
    path = settings.database_url.removeprefix("sqlite:///") + "-writer.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", _LOCK_HOLDER, path, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield holder
    finally:
        holder.kill()
        holder.wait(10)


def _insert_collection(name: str) -> Callable[[Session], object]:
    return lambda session: session.execute(
        text(
            "INSERT INTO collections (name, description, embedding_model, embedding_dimension, "
            "chunk_size, chunk_overlap, created_at, vector_collection) "
            f"VALUES ('{name}', '', 'm', 3, 100, 10, '2026-01-01', '{name}-0')"
        )
    )


def test_writer_processes_take_turns_on_the_lock_file(settings: MetadataSettings) -> None:
    """Writers of the service's other processes queue on an flock beside the
    database, woken by the kernel when it is free, instead of polling in
    SQLite's busy handler; SQLite itself is never locked while they wait."""
    prepare_database(settings)
    db = Database.from_settings(settings)
    path = settings.database_url.removeprefix("sqlite:///")
    try:
        with _lock_held_by_another_process(settings, 0.6):
            started = time.monotonic()
            writer = threading.Thread(target=db.write, args=(_insert_collection("queued"),))
            writer.start()
            time.sleep(0.2)
            assert writer.is_alive()  # waiting for its turn...
            probe = sqlite3.connect(path, timeout=0, isolation_level=None)
            probe.execute("BEGIN IMMEDIATE")  # ...not holding SQLite's lock
            probe.execute("ROLLBACK")
            probe.close()
            writer.join(10)
        assert 0.5 < time.monotonic() - started < 5
        assert db.read(lambda s: s.execute(text("SELECT name FROM collections")).scalar()) == (
            "queued"
        )
    finally:
        db.dispose()


def test_a_killed_writer_process_frees_its_turn(settings: MetadataSettings) -> None:
    prepare_database(settings)
    db = Database.from_settings(settings)
    try:
        with _lock_held_by_another_process(settings, 60) as holder:
            threading.Timer(0.3, holder.kill).start()
            started = time.monotonic()
            db.write(_insert_collection("after-kill"))
            assert time.monotonic() - started < 5  # not the 20 s timeout
    finally:
        db.dispose()


def test_a_turn_not_given_in_time_is_busy_and_leaves_no_lock_behind(
    settings: MetadataSettings,
) -> None:
    impatient = settings.model_copy(update={"sqlite_timeout": 0.3})
    prepare_database(impatient)
    db = Database.from_settings(impatient)
    try:
        with (
            _lock_held_by_another_process(impatient, 60),
            pytest.raises(DatabaseBusy, match="database is locked"),
        ):
            db.write(_insert_collection("never"))
        # The abandoned wait was granted once the holder died, and let go
        # at once: the next writer of this very process gets its turn.
        db.write(_insert_collection("next"))
        assert db.read(
            lambda s: s.execute(text("SELECT name FROM collections")).scalars().all()
        ) == ["next"]
    finally:
        db.dispose()


def _queued_while_locked(
    settings: MetadataSettings, db: Database, units: dict[str, Callable[[Session], object]]
) -> dict[str, object]:
    """Runs each unit's db.write in a thread of its own while another process
    holds the write turn, so they all queue; then lets the turn go. Returns
    each unit's result or exception."""
    outcomes: dict[str, object] = {}

    def write(name: str) -> None:
        try:
            outcomes[name] = db.write(units[name])
        except Exception as exc:
            outcomes[name] = exc

    with _lock_held_by_another_process(settings, 60) as holder:
        threads = [threading.Thread(target=write, args=(name,)) for name in units]
        for thread in threads:
            thread.start()
        time.sleep(0.3)  # all queued behind the holder
        holder.kill()
        for thread in threads:
            thread.join(10)
    return outcomes


def _names(db: Database) -> list[str]:
    query = text("SELECT name FROM collections ORDER BY name")
    return list(db.read(lambda s: s.execute(query).scalars().all()))


def test_concurrent_writes_share_one_transaction(settings: MetadataSettings) -> None:
    """Group commit: the writes a process queued while it waited for its
    turn go out in one transaction, each with its own result."""
    prepare_database(settings)
    db = Database.from_settings(settings)
    try:
        names = [f"c{i}" for i in range(6)]
        units = {name: _insert_collection(name) for name in names}
        outcomes = _queued_while_locked(settings, db, units)
        assert not [o for o in outcomes.values() if isinstance(o, Exception)]
        assert _names(db) == names
        assert db.group_commit_status() == (1, 6)
    finally:
        db.dispose()


def test_a_failing_unit_of_a_shared_transaction_fails_alone(settings: MetadataSettings) -> None:
    prepare_database(settings)
    db = Database.from_settings(settings)

    def fails_after_writing(session: Session) -> None:
        _insert_collection("half-done")(session)
        raise ValueError("refused by the unit itself")

    try:
        outcomes = _queued_while_locked(
            settings,
            db,
            {
                "a": _insert_collection("a"),
                "bad": fails_after_writing,
                "b": _insert_collection("b"),
            },
        )
        assert isinstance(outcomes["bad"], ValueError)
        assert not isinstance(outcomes["a"], Exception)
        assert not isinstance(outcomes["b"], Exception)
        assert _names(db) == ["a", "b"]  # nothing of the failed unit is left
        assert db.group_commit_status() == (1, 3)
    finally:
        db.dispose()


def test_a_database_error_in_a_shared_transaction_runs_each_unit_alone(
    settings: MetadataSettings,
) -> None:
    """SQLite may roll a whole transaction back on an error, so after one
    the group's units run again, each in its own transaction."""
    prepare_database(settings)
    db = Database.from_settings(settings)
    db.write(_insert_collection("taken"))
    try:
        outcomes = _queued_while_locked(
            settings,
            db,
            {
                "a": _insert_collection("a"),
                "duplicate": _insert_collection("taken"),
                "b": _insert_collection("b"),
            },
        )
        assert isinstance(outcomes["duplicate"], IntegrityError)
        assert _names(db) == ["a", "b", "taken"]
        assert db.group_commit_status() == (1 + 3, 1 + 3)
    finally:
        db.dispose()


def test_queued_writes_past_the_timeout_are_busy_and_leave_nothing_queued(
    settings: MetadataSettings,
) -> None:
    impatient = settings.model_copy(update={"sqlite_timeout": 0.2})
    prepare_database(impatient)
    db = Database.from_settings(impatient)
    try:
        outcomes = _queued_while_locked(
            impatient, db, {name: _insert_collection(name) for name in ("x", "y", "z")}
        )
        assert all(isinstance(o, DatabaseBusy) for o in outcomes.values()), outcomes
        db.write(_insert_collection("later"))
        assert _names(db) == ["later"]
        assert db.group_commit_status() == (1, 1)
    finally:
        db.dispose()


def _migrate(url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metadata_service.migrations"],
        env={"DATABASE_URL": url, "PATH": "/usr/bin:/bin"},
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


def test_migrations_module_upgrades_to_head(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    result = _migrate(url, tmp_path)
    assert result.returncode == 0, result.stderr
    engine = build_engine(MetadataSettings(_env_file=None, database_url=url))
    assert migrations.is_up_to_date(engine)
    engine.dispose()
    again = _migrate(url, tmp_path)  # a no-op the second time
    assert again.returncode == 0 and "up to date" in again.stderr
