"""How the writers of one SQLite file share it.

SQLite runs one write transaction at a time, and a writer that finds the lock
taken sleeps in its busy handler in growing steps (1, 2, 5, 10 ... 100 ms),
wasting the time between them. Here writers queue instead:

* the threads of a process on a `threading.Lock`;
* the processes of the service (WORKERS) on an exclusive flock of
  `<database>-writer.lock`, which the kernel hands to the next waiter the
  moment it is released, and frees when its holder dies. Anything else
  writing the file (a script, the sqlite3 shell) is still arbitrated by the
  busy timeout.

And they share transactions (group commit): the thread whose turn it is
writes, besides its own unit of work, those that other threads of its
process queued meanwhile, each in a savepoint of one transaction. Every
transaction costs a BEGIN, a commit (WAL frames for every page it dirtied,
often the same index pages for all of them) and a hand-over between
processes; sharing them is what lets throughput grow with the number of
concurrent writers instead of shrinking. A unit that fails is rolled back
to its savepoint and fails alone; if the database itself refuses something
mid-group, SQLite may have rolled the whole transaction back, so every unit
of the group runs again in a transaction of its own. (What each step gained
in `make bench`'s metadata_write_ratio: docs/benchmarks.md.)
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from askmojo.common.logs import exception_summary
from metadata_service import metrics

try:
    import fcntl
except ImportError:  # not POSIX: SQLite's busy timeout arbitrates alone
    fcntl = None  # type: ignore[assignment]

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")

# Units of work one transaction may carry: enough for every thread of the
# database pool, few enough that one commit never holds the lock for long.
MAX_GROUP = 16

SessionFactory = Callable[[], contextlib.AbstractContextManager[Session]]


class DatabaseBusy(Exception):
    """Another write held the database longer than SQLITE_TIMEOUT."""


def _busy(timeout: float) -> DatabaseBusy:
    return DatabaseBusy(
        f"database is locked: other writes held it for more than {timeout}s (SQLITE_TIMEOUT)"
    )


class _QueuedWrite(Generic[T]):
    """A unit of work waiting for a transaction, and then its outcome."""

    __slots__ = ("done", "error", "result", "work")

    def __init__(self, work: Callable[[Session], T]) -> None:
        self.work = work
        self.done = threading.Event()
        self.result: T | None = None
        self.error: BaseException | None = None

    def settle(self, result: T | None, error: BaseException | None) -> None:
        self.result, self.error = result, error
        self.done.set()

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


class SQLiteWriters:
    """The write queue of one SQLite file in one process. `run` executes a
    unit of work in a write transaction (perhaps shared, see the module
    docstring); `turn` is a plain exclusive turn, for a caller's own
    transaction. Every wait is bounded by `timeout`, like SQLite's own busy
    timeout.

    The lock file is opened for each turn, never kept open: a descriptor
    inherited over fork would share its lock with the parent. Without a
    usable lock file (no fcntl, a read-only directory) the threads still
    queue and SQLite's busy timeout arbitrates between processes.
    """

    def __init__(self, lock_path: str | None, timeout: float) -> None:
        self._lock_path = lock_path
        self._timeout = timeout
        # Guards the queue and whether a thread of this process is writing;
        # notified when units settle and when a turn ends.
        self._turns = threading.Condition()
        self._writing = False
        self._queue: collections.deque[_QueuedWrite[Any]] = collections.deque()
        self._warned = False
        self.transactions = 0  # how many transactions carried how many units,
        self.units = 0  # for GetStats and the benchmark

    def run(self, work: Callable[[Session], T], open_session: SessionFactory) -> T:
        item = _QueuedWrite(work)
        deadline = time.monotonic() + self._timeout
        with self._turns:
            self._queue.append(item)
        queued = time.monotonic()
        mine = self._take_turn(deadline, item)
        metrics.writer_waited("thread", time.monotonic() - queued)
        if not mine:
            return item.outcome()  # written by whoever had the turn
        try:
            while not item.done.is_set():
                try:
                    fd = self._lock_file(deadline)
                except BaseException:
                    self._withdraw(item)
                    raise
                try:
                    self._commit(self._take_group(), open_session)
                finally:
                    if fd is not None:
                        os.close(fd)  # closing releases the flock
                with self._turns:
                    self._turns.notify_all()  # the units just settled return
        finally:
            self._end_turn()
        return item.outcome()

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        started = time.monotonic()
        deadline = started + self._timeout
        self._take_turn(deadline)
        metrics.writer_waited("thread", time.monotonic() - started)
        try:
            fd = self._lock_file(deadline)
            try:
                yield
            finally:
                if fd is not None:
                    os.close(fd)
        finally:
            self._end_turn()

    def _take_turn(self, deadline: float, item: _QueuedWrite[Any] | None = None) -> bool:
        """Waits until no other thread of this process writes; False if
        meanwhile that thread wrote `item` too. DatabaseBusy past `deadline`
        (unless `item` is being committed already: then it waits for that)."""
        with self._turns:
            while self._writing and not (item is not None and item.done.is_set()):
                remaining = deadline - time.monotonic()
                if remaining <= 0 and (item is None or self._withdraw_locked(item)):
                    raise _busy(self._timeout)
                self._turns.wait(remaining if remaining > 0 else None)
            if item is not None and item.done.is_set():
                return False
            self._writing = True
            return True

    def _end_turn(self) -> None:
        with self._turns:
            self._writing = False
            self._turns.notify_all()

    # --- group commit -------------------------------------------------------

    def _withdraw(self, item: _QueuedWrite[Any]) -> bool:
        with self._turns:
            return self._withdraw_locked(item)

    def _withdraw_locked(self, item: _QueuedWrite[Any]) -> bool:
        try:
            self._queue.remove(item)
        except ValueError:
            return False  # taken by the writer, who will settle it
        return True

    def _take_group(self) -> list[_QueuedWrite[Any]]:
        with self._turns:
            return [self._queue.popleft() for _ in range(min(MAX_GROUP, len(self._queue)))]

    def _commit(self, group: list[_QueuedWrite[Any]], open_session: SessionFactory) -> None:
        """Settles every unit of `group`, whatever happens."""
        if len(group) > 1:
            try:
                outcomes = self._commit_together(group, open_session)
            except Exception as exc:  # rolled back whole: nothing of it was written
                _LOGGER.debug(
                    "a shared write transaction failed; its units run one by one",
                    extra={"units": len(group), "error": exception_summary(exc)},
                )
            except BaseException as exc:
                for item in group:
                    item.settle(None, exc)
                raise
            else:
                for item, (result, error) in zip(group, outcomes, strict=True):
                    item.settle(result, error)
                self._count(1, len(group))
                return
        for item in group:
            self._commit_alone(item, open_session)

    def _commit_together(
        self, group: list[_QueuedWrite[Any]], open_session: SessionFactory
    ) -> list[tuple[Any, Exception | None]]:
        outcomes: list[tuple[Any, Exception | None]] = []
        with open_session() as session:
            for item in group:
                try:
                    with session.begin_nested():
                        outcomes.append((item.work(session), None))
                except DBAPIError:
                    # SQLite may have rolled the whole transaction back (a
                    # full disk, a busy lock): no savepoint can be trusted.
                    raise
                except Exception as exc:  # the unit's own failure, rolled back alone
                    outcomes.append((None, exc))
        return outcomes

    def _commit_alone(self, item: _QueuedWrite[Any], open_session: SessionFactory) -> None:
        try:
            with open_session() as session:
                result = item.work(session)
        except BaseException as exc:  # the caller's thread re-raises it
            item.settle(None, exc)
        else:
            item.settle(result, None)
        self._count(1, 1)

    def _count(self, transactions: int, units: int) -> None:
        self.transactions += transactions
        self.units += units
        metrics.group_committed(units)

    # --- the lock file ------------------------------------------------------

    def _lock_file(self, deadline: float) -> int | None:
        if self._lock_path is None or fcntl is None:
            return None
        try:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                _LOGGER.warning(
                    "no writer lock file: processes share the database through SQLite's "
                    "busy timeout alone",
                    extra={"path": self._lock_path, "error": str(exc)},
                )
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            metrics.writer_waited("process", 0.0)
            return fd
        except BlockingIOError:
            pass
        except OSError:
            os.close(fd)
            raise
        waiting = time.monotonic()
        fd = self._wait_for_lock_file(fd, deadline)
        metrics.writer_waited("process", time.monotonic() - waiting)
        return fd

    def _wait_for_lock_file(self, fd: int, deadline: float) -> int:
        """Another process writes: a helper thread blocks in flock (woken by
        the kernel at once on release) while this one waits with a timeout.
        A wait given up hands `fd` to the helper, which closes it (releasing
        the lock at once) if it is ever granted."""
        assert fcntl is not None
        granted = threading.Event()
        guard = threading.Lock()
        state: dict[str, object] = {"abandoned": False, "error": None}

        def wait() -> None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                state["error"] = exc
            with guard:
                if not state["abandoned"]:
                    granted.set()
                    return
            os.close(fd)

        threading.Thread(target=wait, name="sqlite-writer-lock", daemon=True).start()
        if granted.wait(max(0.0, deadline - time.monotonic())):
            return self._granted(fd, state)
        with guard:
            if granted.is_set():
                return self._granted(fd, state)
            state["abandoned"] = True
        raise _busy(self._timeout)

    @staticmethod
    def _granted(fd: int, state: dict[str, object]) -> int:
        error = state["error"]
        if isinstance(error, OSError):
            os.close(fd)
            raise error
        return fd
