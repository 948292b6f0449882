"""Dynamic batching in front of the embedding pool.

Texts from concurrent calls and streams wait in two lanes: interactive (small
unary calls: a search's query, a single text) and bulk (streams, large
calls). A batch closes when it holds `MAX_BATCH_TEXTS` texts,
`MAX_BATCH_TOKENS` (padded) tokens, or `MAX_BATCH_WAIT_MS` after its first
text arrived, and at most one batch per worker is in flight — so waiting work
stays here, where texts of a call that was cancelled or ran out of time are
dropped before they reach the model. Interactive batches go first and may
also use the `EXPRESS_WORKERS` that bulk batches never occupy: a query does
not wait behind a bulk batch. Results are routed back to each call in its
own order.

The queue is bounded: `submit(..., wait=False)` (unary calls) fails at once
with `QueueFull`; `wait=True` (streams) waits for room, which stops the stream
reading ahead and lets gRPC flow control slow the client down.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from vector_service import metrics
from vector_service.embedding.pool import PoolUnavailable
from vector_service.embedding.tokens import estimate_tokens
from vector_service.embedding.worker import BatchResult

_LOGGER = logging.getLogger(__name__)


# How many batches' worth of queued texts a batch is chosen from: the more,
# the closer in length its texts (8 comes within a few percent of sorting
# everything: docs/benchmarks.md), and the longer a text may wait behind
# shorter ones (at most
# LOOKAHEAD batches: each batch takes the oldest text).
LOOKAHEAD = 8


class Embeds(Protocol):
    """What the batcher needs of the pool: `EmbeddingPool` is one, and the
    unit tests' stand-ins are others."""

    async def embed(self, texts: list[str], interactive: bool = False) -> BatchResult:
        """Vectors for one batch; `interactive` batches may use the express
        workers. Raises PoolUnavailable when the batch could not run."""
        ...


class Lane(enum.Enum):
    INTERACTIVE = "interactive"
    BULK = "bulk"


class QueueFull(Exception):
    """No room for these texts right now."""


@dataclass
class _Call:
    """One submit(): its texts and where their results go."""

    texts: list[str]
    future: asyncio.Future[BatchResult]
    vectors: np.ndarray
    token_counts: list[int]
    truncated: list[bool]
    remaining: int
    queued: int  # texts still in the queue (not yet in a batch)

    @property
    def abandoned(self) -> bool:
        return self.future.done()


@dataclass
class _Item:
    call: _Call
    index: int
    cost: int  # estimated tokens
    arrived: float


@dataclass
class BatcherStats:
    batches: int = 0
    texts: int = 0
    dropped: int = 0
    batch_sizes: collections.Counter[int] = field(default_factory=collections.Counter)


class DynamicBatcher:
    def __init__(
        self,
        pool: Embeds,
        *,
        dimension: int,
        window: int,
        max_batch_texts: int,
        max_batch_tokens: int,
        max_wait_ms: float,
        max_queued_texts: int,
        max_in_flight: int,
        express_slots: int = 0,
        token_counter: Callable[[Sequence[str]], list[int]] | None = None,
    ) -> None:
        """`token_counter` measures texts for grouping (tokens.py); without
        one, lengths are estimated from characters."""
        self._pool = pool
        self._dimension = dimension
        self._window = window
        self._max_texts = max_batch_texts
        self._max_tokens = max_batch_tokens
        self._max_wait = max_wait_ms / 1000
        self._capacity = max_queued_texts
        self._lanes: dict[Lane, collections.deque[_Item]] = {
            Lane.INTERACTIVE: collections.deque(),
            Lane.BULK: collections.deque(),
        }
        # Set on every arrival and every finished batch: the moments the
        # loop's next step can change.
        self._wake = asyncio.Event()
        self._room = asyncio.Event()  # set whenever queue space was freed
        # Texts of live calls still queued: what capacity is measured against
        # (texts of cancelled calls stop counting the moment they are cancelled).
        self._waiting = 0
        # Bulk batches may occupy `max_in_flight` workers; interactive ones
        # those too, plus the express workers kept free for them.
        self._regular_slots = max_in_flight
        self._express_slots = express_slots
        self._busy = {Lane.INTERACTIVE: 0, Lane.BULK: 0}
        self._express_busy = 0
        self._task: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._count_tokens = token_counter
        # Bulk texts are counted on a thread of their own: a stream message of
        # long passages takes tens of milliseconds, too long for the loop.
        self._counting = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="token-count")
            if token_counter is not None
            else None
        )
        self.stats = BatcherStats()
        metrics.watch_batcher(self)

    @property
    def queued(self) -> int:
        return self._waiting

    def queue_state(self) -> metrics.BatcherState:
        """For the metrics scrape (another thread): plain reads, no lock."""
        return metrics.BatcherState(
            queued={lane.value: len(queue) for lane, queue in self._lanes.items()},
            in_flight={lane.value: busy for lane, busy in self._busy.items()},
            capacity=self._capacity,
            workers={"regular": self._regular_slots, "express": self._express_slots},
        )

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="embedding-batcher")
        self._task.add_done_callback(self._on_run_exit)

    def _on_run_exit(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            _LOGGER.critical("the embedding batcher died", exc_info=task.exception())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for queue in self._lanes.values():
            for item in queue:  # nobody will ever take these
                if not item.call.future.done():
                    item.call.future.set_exception(PoolUnavailable("the service is stopping"))
            queue.clear()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        if self._counting is not None:
            self._counting.shutdown(wait=False, cancel_futures=True)

    async def embed(self, texts: list[str], *, wait: bool) -> BatchResult:
        """Embeds `texts` (in order) as part of whatever batches form. A
        unary call (`wait=False`) that fits in one batch is interactive (a
        query, a single text: someone is waiting for it) and goes ahead of
        bulk work (streams, large calls)."""
        if self._task is None or self._task.done():
            raise PoolUnavailable("the embedding batcher is not running")
        if len(texts) > self._capacity:
            raise QueueFull(f"{len(texts)} texts exceed the queue's capacity ({self._capacity})")
        lane = Lane.INTERACTIVE if not wait and len(texts) <= self._max_texts else Lane.BULK
        costs = await self._costs(texts, lane)
        while self._waiting + len(texts) > self._capacity:
            if not wait:
                raise QueueFull("the embedding queue is full; retry with backoff")
            self._room.clear()
            await self._room.wait()
        loop = asyncio.get_running_loop()
        call = _Call(
            texts=texts,
            future=loop.create_future(),
            vectors=np.empty((len(texts), self._dimension), dtype=np.float32),
            token_counts=[0] * len(texts),
            truncated=[False] * len(texts),
            remaining=len(texts),
            queued=len(texts),
        )
        self._waiting += len(texts)
        call.future.add_done_callback(lambda _: self._release(call))
        now = time.monotonic()
        self._lanes[lane].extend(_Item(call, i, cost, now) for i, cost in enumerate(costs))
        self._wake.set()
        # Cancelling the caller (client gone, deadline passed) cancels this
        # future; its queued texts are then skipped, never embedded.
        return await call.future

    async def _costs(self, texts: list[str], lane: Lane) -> list[int]:
        """Token counts of bulk texts, where grouping pays; interactive
        batches are small and someone is waiting: estimated at once."""
        if lane is Lane.INTERACTIVE or self._counting is None or self._count_tokens is None:
            return [estimate_tokens(text, self._window) for text in texts]
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._counting, self._count_tokens, texts)

    def _release(self, call: _Call) -> None:
        """A call finished (or was cancelled): its queued texts no longer count."""
        if call.queued:
            self._waiting -= call.queued
            call.queued = 0
            self._room.set()

    async def _run(self) -> None:
        while True:
            choice = self._next_lane()
            if choice is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            lane, express = choice
            batch = await self._form_batch(lane)
            self._room.set()
            if not batch:
                continue
            self._busy[lane] += 1
            self._express_busy += express
            task = asyncio.create_task(self._dispatch(batch, lane, express))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    def _free_slots(self) -> tuple[int, int]:
        """Free (regular, express) workers."""
        regular_busy = self._busy[Lane.INTERACTIVE] + self._busy[Lane.BULK] - self._express_busy
        return self._regular_slots - regular_busy, self._express_slots - self._express_busy

    def _next_lane(self) -> tuple[Lane, bool] | None:
        """The lane whose next batch has work and a worker for it, interactive
        first, and whether it takes an express worker (only interactive
        batches do)."""
        regular, express = self._free_slots()
        if self._lanes[Lane.INTERACTIVE] and regular + express > 0:
            return Lane.INTERACTIVE, regular == 0
        if self._lanes[Lane.BULK] and regular > 0:
            return Lane.BULK, False
        return None

    async def _form_batch(self, lane: Lane) -> list[_Item]:
        """Takes up to one batch from the lane, waiting for it to fill until
        its oldest text has waited max_wait (texts that already waited for a
        busy pool go at once). Interactive texts are spread over the free
        workers: a burst of 16 single-text calls becomes two batches of 8
        running side by side, not one batch of 16 beside an idle worker."""
        queue = self._lanes[lane]
        while queue and len(queue) < self._max_texts:
            left = queue[0].arrived + self._max_wait - time.monotonic()
            if left <= 0:
                break
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                break
        limit = self._max_texts
        if lane is Lane.INTERACTIVE:
            free = max(1, sum(self._free_slots()))
            limit = min(limit, -(-len(queue) // free))
        return self._take_batch(queue, limit)

    def _take_batch(self, queue: collections.deque[_Item], limit: int) -> list[_Item]:
        """Removes the next batch from the queue: the oldest live text and,
        from the texts queued behind it (up to LOOKAHEAD batches' worth), the
        ones closest to it in length, shorter first. A batch is padded to its
        longest text, so texts of similar length waste the least compute —
        what `SentenceTransformer.encode` gets by sorting its whole input.
        Every batch takes the oldest text, so none waits more than
        LOOKAHEAD batches."""
        window: list[_Item] = []
        while queue and len(window) < self._max_texts * LOOKAHEAD:
            item = queue.popleft()
            if item.call.abandoned:
                self.stats.dropped += 1  # its call's count was released already
            else:
                window.append(item)
        if not window:
            return []
        oldest = window[0]
        # Nearest in length first: those no longer than the oldest (longest
        # first), then longer ones (shortest first); ties go oldest first.
        behind = window[1:]
        shorter = sorted((i for i in behind if i.cost <= oldest.cost), key=lambda i: -i.cost)
        longer = sorted((i for i in behind if i.cost > oldest.cost), key=lambda i: i.cost)
        batch = [oldest]
        longest = oldest.cost
        for item in itertools.chain(shorter, longer):
            if len(batch) == limit:
                break
            if max(longest, item.cost) * (len(batch) + 1) > self._max_tokens:
                break  # candidates only grow from here on
            longest = max(longest, item.cost)
            batch.append(item)
        taken = {id(item) for item in batch}
        # The rest goes back to the head of the queue in arrival order.
        queue.extendleft(reversed([i for i in window if id(i) not in taken]))
        for item in batch:
            item.call.queued -= 1
        self._waiting -= len(batch)
        return batch

    async def _dispatch(self, batch: list[_Item], lane: Lane, express: bool) -> None:
        calls = {id(item.call): item.call for item in batch}.values()
        started = time.perf_counter()
        try:
            try:
                result = await self._pool.embed(
                    [item.call.texts[item.index] for item in batch], lane is Lane.INTERACTIVE
                )
            except BaseException:
                metrics.batch_failed(lane.value, time.perf_counter() - started)
                raise
            metrics.batch_done(lane.value, result.token_counts, time.perf_counter() - started)
            self.stats.batches += 1
            self.stats.texts += len(batch)
            self.stats.batch_sizes[len(batch)] += 1
            for row, item in enumerate(batch):
                call = item.call
                if call.future.done():
                    continue
                call.vectors[item.index] = result.vectors[row]
                call.token_counts[item.index] = result.token_counts[row]
                call.truncated[item.index] = result.truncated[row]
                call.remaining -= 1
                if call.remaining == 0:
                    call.future.set_result(
                        BatchResult(call.vectors, call.token_counts, call.truncated)
                    )
        except BaseException as exc:  # whatever happened, no call may wait forever
            for call in calls:
                if not call.future.done():
                    call.future.set_exception(
                        exc if isinstance(exc, Exception) else PoolUnavailable("batch cancelled")
                    )
            if not isinstance(exc, Exception):
                raise
        finally:
            self._busy[lane] -= 1
            self._express_busy -= express
            self._wake.set()
