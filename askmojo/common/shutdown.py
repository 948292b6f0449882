"""Graceful shutdown, shared by both services (issue #12).

SIGTERM (or SIGINT) starts a stop: health goes NOT_SERVING, the server stops
accepting calls and the calls in flight get SHUTDOWN_GRACE_SECONDS to finish.
`Shutdown` is what the running code sees of it:

- `draining`: a stop began. Long-lived work takes no more (an ingest stream
  reads no further batch; the background indexer starts no new pass).
- `hurry`: the grace is nearly over (`margin` before its end) or a second
  signal came: work in flight answers now with what it has (indexing is cut
  short; its chunks stay PENDING, given back), so the caller gets a clear
  status instead of a cancellation.

A second SIGTERM/SIGINT during the grace shortens it: `hurry` at once, and
the calls still running `margin` later are cancelled. The clean-up that
follows (leases given back, workers stopped, stores closed) always runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")

# How long before the grace ends work in flight is told to answer.
_MAX_MARGIN_S = 1.0


class Shutdown:
    """One process's stop: its signals, its grace and the events above."""

    def __init__(self, grace: float) -> None:
        self.grace, self.margin = grace, _margin(grace)
        self.requested = asyncio.Event()
        self.draining = asyncio.Event()
        self.hurry = asyncio.Event()
        self._signals = 0

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """SIGINT and SIGTERM handlers on `loop`: the first asks for a stop,
        the second for a faster one."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.on_signal, signum)

    def on_signal(self, signum: int) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals == 1:
            _LOGGER.info("stop requested", extra={"signal": name, "grace_seconds": self.grace})
            self.requested.set()
        else:
            _LOGGER.warning(
                "second stop signal: in-flight calls are answered now and cancelled %.1f s later",
                self.margin,
                extra={"signal": name},
            )
            self.hurry.set()

    def set_grace(self, grace: float | None) -> None:
        """A stop's own grace (a test's, a caller's); None keeps
        SHUTDOWN_GRACE_SECONDS. Call before `begin`."""
        if grace is not None:
            self.grace, self.margin = grace, _margin(grace)

    def begin(self) -> asyncio.TimerHandle:
        """Marks the stop as begun; `hurry` follows `margin` before the grace
        ends (cancel the returned handle once done)."""
        self.requested.set()
        self.draining.set()
        loop = asyncio.get_running_loop()
        return loop.call_later(max(0.0, self.grace - self.margin), self.hurry.set)

    async def stop_grpc(self, server: object) -> None:
        """`server.stop(grace)` (grpc.aio), cancelling the calls still
        running `margin` after `hurry` (a second signal: sooner than the
        grace)."""
        stopping = asyncio.ensure_future(server.stop(self.grace))  # type: ignore[attr-defined]
        hurried = asyncio.ensure_future(self.hurry.wait())
        try:
            await asyncio.wait({stopping, hurried}, return_when=asyncio.FIRST_COMPLETED)
            if not stopping.done():
                done, _ = await asyncio.wait({stopping}, timeout=self.margin)
                if not done:
                    await server.stop(0)  # type: ignore[attr-defined]
            await stopping
        finally:
            hurried.cancel()

    async def unless_hurried(self, work: Awaitable[T]) -> tuple[bool, T | None]:
        """Runs `work` until it ends or `hurry` is set, whichever comes
        first; (False, None) when cut short (`work` cancelled, and waited
        for so its clean-up ran)."""
        task = asyncio.ensure_future(work)
        if self.hurry.is_set() and not task.done():
            task.cancel()
        hurried = asyncio.ensure_future(self.hurry.wait())
        try:
            await asyncio.wait({task, hurried}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            hurried.cancel()
        if not task.done():
            task.cancel()
        try:
            return True, await task
        except asyncio.CancelledError:
            if asyncio.current_task() is not None and _cancelling():
                raise  # we were cancelled ourselves, not just the work
            return False, None

    async def until_draining(
        self, source: AsyncIterator[T], cut: Callable[[], None]
    ) -> AsyncIterator[T]:
        """`source`'s items until a stop begins; then no further one is read
        and `cut()` is called."""
        draining = asyncio.ensure_future(self.draining.wait())
        item: asyncio.Future[T] | None = None
        try:
            while not self.draining.is_set():
                item = asyncio.ensure_future(anext(source))
                await asyncio.wait({item, draining}, return_when=asyncio.FIRST_COMPLETED)
                if not item.done():
                    item.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await item
                    break
                try:
                    value = item.result()
                except StopAsyncIteration:
                    return
                yield value
            cut()
        finally:
            draining.cancel()
            # Closed or cancelled while waiting for the next item (the call
            # ended): the read of it must not outlive us, still running
            # `source` when its owner closes it.
            if item is not None and not item.done():
                item.cancel()


def _margin(grace: float) -> float:
    return min(_MAX_MARGIN_S, grace / 2)


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


@contextlib.contextmanager
def step(what: str, logger: logging.Logger = _LOGGER) -> Iterator[None]:
    """Logs one shutdown step with its duration."""
    started = time.monotonic()
    try:
        yield
    finally:
        logger.info(
            "shutdown step: %s",
            what,
            extra={"step": what, "ms": round((time.monotonic() - started) * 1000, 1)},
        )
