"""askmojo.common.shutdown without processes: what a stop does to the work
that sees it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from askmojo.common.shutdown import Shutdown


def test_a_stream_cancelled_while_reading_stops_reading_its_source() -> None:
    async def scenario() -> None:
        reading = asyncio.Event()
        source_closed = asyncio.Event()

        async def source() -> AsyncIterator[int]:
            try:
                yield 1
                reading.set()
                await asyncio.Event().wait()  # a client that sends nothing more
                yield 2
            finally:
                source_closed.set()

        async def consume() -> None:
            async for _ in Shutdown(5).until_draining(source(), lambda: None):
                pass

        consumer = asyncio.create_task(consume())
        await asyncio.wait_for(reading.wait(), 10)
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        # The pending read was cancelled with the stream, not left running.
        await asyncio.wait_for(source_closed.wait(), 10)

    asyncio.run(scenario())


def test_a_stop_ends_the_stream_and_cuts_it() -> None:
    async def scenario() -> list[int]:
        shutdown = Shutdown(5)
        cut: list[bool] = []

        async def source() -> AsyncIterator[int]:
            yield 1
            shutdown.draining.set()
            await asyncio.Event().wait()
            yield 2

        got = [i async for i in shutdown.until_draining(source(), lambda: cut.append(True))]
        assert cut == [True]
        return got

    assert asyncio.run(scenario()) == [1]


def test_a_stop_of_its_own_grace_keeps_the_margin_within_it() -> None:
    shutdown = Shutdown(10)
    assert (shutdown.grace, shutdown.margin) == (10, 1.0)
    shutdown.set_grace(None)
    assert (shutdown.grace, shutdown.margin) == (10, 1.0)
    shutdown.set_grace(0.5)
    assert (shutdown.grace, shutdown.margin) == (0.5, 0.25)
