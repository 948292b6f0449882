"""`in_order`: overlapping work on a stream's messages, answered in order."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from askmojo.common.streams import in_order
from tests.waiting import until


async def numbers(count: int, read: list[int]) -> AsyncIterator[int]:
    for n in range(count):
        read.append(n)
        yield n


def test_results_come_in_message_order_with_at_most_depth_in_flight() -> None:
    async def scenario() -> None:
        read: list[int] = []
        running: set[int] = set()
        most = 0

        async def work(n: int) -> int:
            nonlocal most
            running.add(n)
            most = max(most, len(running))
            # Work of varying length (simulated, orders nothing), so results
            # finish out of order and in_order has something to put right.
            await asyncio.sleep(random.uniform(0, 0.01))
            running.discard(n)
            return n * 10

        out = [(m, r) async for m, r in in_order(numbers(30, read), work, depth=3)]
        assert out == [(n, n * 10) for n in range(30)]
        assert 1 < most <= 3

    asyncio.run(scenario())


def test_the_source_is_not_read_ahead_of_the_window() -> None:
    async def scenario() -> None:
        read: list[int] = []
        gate = asyncio.Event()
        started: list[int] = []
        window_full = asyncio.Event()

        async def work(n: int) -> int:
            started.append(n)
            if len(started) == 4:
                window_full.set()
            await gate.wait()
            return n

        stream = in_order(numbers(100, read), work, depth=4)
        first = asyncio.ensure_future(anext(stream))
        # Work starts only once the reader yields: by the time 4 have started,
        # a reader ignoring the window would have read on (the source never
        # suspends).
        await asyncio.wait_for(window_full.wait(), 5)
        assert read == [0, 1, 2, 3]  # flow control reaches the client
        gate.set()
        assert await first == (0, 0)
        await stream.aclose()

    asyncio.run(scenario())


def test_a_failing_message_is_reported_in_band_and_the_stream_goes_on() -> None:
    async def scenario() -> None:
        async def work(n: int) -> int:
            if n == 2:
                raise ValueError("bad message")
            return n

        out = [r async for _, r in in_order(numbers(5, []), work, depth=2)]
        assert [r for r in out if not isinstance(r, Exception)] == [0, 1, 3, 4]
        assert isinstance(out[2], ValueError)

    asyncio.run(scenario())


def test_a_broken_source_raises_after_the_outcomes_before_it() -> None:
    async def broken() -> AsyncIterator[int]:
        yield 1
        raise ConnectionError("client went away")

    async def scenario() -> list[object]:
        async def work(n: int) -> int:
            return n

        seen: list[object] = []
        with pytest.raises(ConnectionError):
            async for _, result in in_order(broken(), work, depth=2):
                seen.append(result)
        return seen

    assert asyncio.run(scenario()) == [1]


def test_leaving_early_cancels_the_work_in_flight() -> None:
    async def scenario() -> None:
        started: list[asyncio.Task[object]] = []
        cancelled = 0
        never = asyncio.Event()

        async def work(n: int) -> int:
            nonlocal cancelled
            task = asyncio.current_task()
            assert task is not None
            started.append(task)
            try:
                if n:
                    await never.wait()  # every message but the first is still in flight
            except asyncio.CancelledError:
                cancelled += 1
                raise
            return n

        stream = in_order(numbers(10, []), work, depth=3)
        assert await anext(stream) == (0, 0)
        await until(lambda: len(started) >= 3, what="messages 1 and 2 in flight")
        await stream.aclose()
        await asyncio.wait(started[1:], timeout=5)  # the cancellations land
        assert cancelled == len(started) - 1 >= 2

    asyncio.run(scenario())
