"""Waiting for a condition instead of sleeping for a guess.

A test that sleeps "long enough" for another thread, process or task to get
somewhere is slow on a fast day and flaky on a slow one. These poll the
condition itself and fail, with what was awaited, only when a deadline
passes. The polling interval is the only sleep: it orders nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

DEFAULT_TIMEOUT = 10.0


def wait_until(
    predicate: Callable[[], object],
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "condition",
    describe: Callable[[], object] | None = None,
    interval: float = 0.02,
) -> None:
    """Returns as soon as `predicate()` is true; AssertionError after `timeout` s
    (with `describe()`, the state last seen, when given)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            state = f"; last seen: {describe()}" if describe is not None else ""
            raise AssertionError(f"{what} did not hold within {timeout} s{state}")
        time.sleep(interval)  # polling, not ordering: the predicate decides


async def until(
    predicate: Callable[[], object],
    within: float = DEFAULT_TIMEOUT,
    what: str = "condition",
    interval: float = 0.001,
) -> None:
    """`wait_until` for the event loop: the other tasks run while it polls."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not hold within {within} s")
        await asyncio.sleep(interval)  # polling, not ordering: the predicate decides


async def until_answered(
    check: Callable[[], Awaitable[object]],
    within: float = DEFAULT_TIMEOUT,
    what: str = "condition",
    interval: float = 0.01,
) -> None:
    """`until` for a check that is itself a call (a query that may fail):
    awaited each round. The interval matters even when the check awaits: a
    call refused at once never yields, and the client's own tasks (a new
    look-up, a reconnection) must run between rounds."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not hold within {within} s")
        await asyncio.sleep(interval)  # polling, not ordering: the check decides
