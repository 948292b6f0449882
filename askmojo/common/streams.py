"""Bidirectional streams whose batches overlap: `in_order`.

A stream handled one message at a time leaves the slow stage (the model, the
vector service) idle while the last response goes out and the next request is
read. `in_order` starts work on up to `depth` messages at once and yields the
outcomes in the order the messages came; it stops reading while `depth` are
in flight, so gRPC flow control still slows a fast client down and no side
buffers without bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


async def in_order(
    source: AsyncIterator[T], work: Callable[[T], Awaitable[R]], depth: int
) -> AsyncIterator[tuple[T, R | Exception]]:
    """(message, its result or the exception its work raised), in message
    order. An exception raised by `source` itself (a broken request stream)
    propagates after the outcomes before it; leaving early (the caller
    cancelled, the client went away) cancels the work in flight."""
    # Unbounded, but `room` admits at most `depth` messages into it: the
    # next message is not even read while `depth` are in flight.
    pending: asyncio.Queue[tuple[T, asyncio.Task[R]] | None] = asyncio.Queue()
    room = asyncio.Semaphore(depth)

    async def read() -> None:
        try:
            while True:
                await room.acquire()
                try:
                    message = await anext(source)
                except StopAsyncIteration:
                    break
                pending.put_nowait((message, asyncio.ensure_future(work(message))))
        except asyncio.CancelledError:
            raise  # the consumer is gone; nobody reads `pending` any more
        except Exception:
            pending.put_nowait(None)  # the consumer then re-raises via `await reader`
            raise
        else:
            pending.put_nowait(None)

    reader = asyncio.create_task(read())
    try:
        while (item := await pending.get()) is not None:
            message, task = item
            try:
                result: R | Exception = await task
            except Exception as exc:  # this message's failure, reported in-band
                result = exc
            room.release()
            yield message, result
        await reader  # re-raises a broken request stream
    finally:
        reader.cancel()
        while not pending.empty():
            leftover = pending.get_nowait()
            if leftover is not None:
                leftover[1].cancel()
