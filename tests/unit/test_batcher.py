"""The dynamic batcher's rules, with a stand-in for the process pool (the
pool itself is tested for real in tests/vector_service)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from tests.waiting import until
from vector_service.embedding.batcher import DynamicBatcher, Embeds, QueueFull
from vector_service.embedding.worker import BatchResult


class GatedPool:
    """Embeds a text as [len(text)]; holds each batch until released."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def embed(self, texts: list[str], interactive: bool = False) -> BatchResult:
        self.batches.append(list(texts))
        await self.gate.wait()
        vectors = np.array([[float(len(t))] for t in texts], dtype=np.float32)
        return BatchResult(vectors, [len(t) for t in texts], [False] * len(texts))


def batcher(
    pool: Embeds,
    token_counter: Callable[[Sequence[str]], list[int]] | None = None,
    **overrides: float,
) -> DynamicBatcher:
    options: dict[str, float] = {
        "max_batch_texts": 4,
        "max_batch_tokens": 10_000,
        "max_wait_ms": 5,
        "max_queued_texts": 8,
        "max_in_flight": 1,
        **overrides,
    }
    return DynamicBatcher(
        pool,
        dimension=1,
        window=256,
        token_counter=token_counter,
        **options,  # type: ignore[arg-type]
    )


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_concurrent_calls_share_batches_and_get_their_own_results() -> None:
    async def scenario() -> None:
        pool = GatedPool()
        b = batcher(pool)
        b.start()
        results = await asyncio.gather(*(b.embed(["x" * n], wait=False) for n in range(1, 7)))
        await b.stop()
        assert [float(r.vectors[0][0]) for r in results] == [1, 2, 3, 4, 5, 6]
        assert [len(batch) for batch in pool.batches] == [4, 2]

    run(scenario())


def test_a_call_split_across_batches_comes_back_in_order() -> None:
    async def scenario() -> None:
        pool = GatedPool()
        b = batcher(pool)
        b.start()
        result = await b.embed(["a", "bb", "ccc", "dddd", "eeeee", "ffffff"], wait=False)
        await b.stop()
        assert result.vectors[:, 0].tolist() == [1, 2, 3, 4, 5, 6]
        assert result.token_counts == [1, 2, 3, 4, 5, 6]

    run(scenario())


def test_cancelled_calls_never_reach_the_model() -> None:
    async def scenario() -> None:
        pool = GatedPool()
        pool.gate.clear()  # the first batch occupies the only worker
        b = batcher(pool)
        b.start()
        first = asyncio.create_task(b.embed(["busy"], wait=False))
        await until(lambda: len(pool.batches) == 1, what="the worker took the first batch")
        doomed = asyncio.create_task(b.embed(["doomed-1", "doomed-2"], wait=False))
        kept = asyncio.create_task(b.embed(["kept"], wait=False))
        await until(lambda: b.queued == 3, what="both calls queued")
        doomed.cancel()  # the client went away (or its deadline passed)
        pool.gate.set()
        await first
        assert (await kept).vectors.shape == (1, 1)
        await b.stop()
        seen = [text for batch in pool.batches for text in batch]
        assert "doomed-1" not in seen and "doomed-2" not in seen
        assert b.stats.dropped == 2
        assert b.queued == 0

    run(scenario())


def test_a_cancelled_call_frees_its_queue_space_at_once() -> None:
    async def scenario() -> None:
        pool = GatedPool()
        pool.gate.clear()
        b = batcher(pool, max_queued_texts=4, max_batch_texts=2)
        b.start()
        busy = asyncio.create_task(b.embed(["a", "b"], wait=False))  # taken by the worker
        await until(lambda: len(pool.batches) == 1, what="the worker took the first batch")
        queued = asyncio.create_task(b.embed(["c", "d", "e", "f"], wait=False))
        await until(lambda: b.queued == 4, what="the call queued")
        queued.cancel()  # its client went away while the worker is still busy
        await until(lambda: b.queued == 0, what="the cancelled call's texts released")
        assert len(pool.batches) == 1, "released while the worker is still busy"
        late = asyncio.create_task(b.embed(["g"], wait=False))  # room again, no QueueFull
        pool.gate.set()
        await busy
        assert (await late).vectors.shape == (1, 1)
        await b.stop()

    run(scenario())


def test_full_queue_refuses_unary_and_slows_streams() -> None:
    async def scenario() -> None:
        pool = GatedPool()
        pool.gate.clear()
        b = batcher(pool, max_queued_texts=4, max_batch_texts=2)
        b.start()
        busy = asyncio.create_task(b.embed(["a", "b"], wait=False))  # taken by the worker
        await until(lambda: len(pool.batches) == 1, what="the worker took the first batch")
        queued = asyncio.create_task(b.embed(["c", "d", "e", "f"], wait=False))  # fills it
        await until(lambda: b.queued == 4, what="the queue filled")
        with pytest.raises(QueueFull):
            await b.embed(["g"], wait=False)
        streamed = asyncio.create_task(b.embed(["h"], wait=True))
        # Nothing frees room while the gate is closed: the stream must still be
        # waiting when this bounded look ends.
        done, _ = await asyncio.wait({streamed}, timeout=0.05)
        assert not done, "a stream waits for room instead of failing"
        pool.gate.set()
        await asyncio.gather(busy, queued)
        assert (await streamed).vectors.shape == (1, 1)
        await b.stop()

    run(scenario())


def test_pool_failure_reaches_every_call_of_the_batch() -> None:
    class BrokenPool(GatedPool):
        async def embed(self, texts: list[str], interactive: bool = False) -> BatchResult:
            self.batches.append(list(texts))
            raise RuntimeError("worker died")

    async def scenario() -> None:
        pool = BrokenPool()
        b = batcher(pool)
        b.start()
        outcomes = await asyncio.gather(
            b.embed(["a"], wait=False), b.embed(["b"], wait=False), return_exceptions=True
        )
        await b.stop()
        assert pool.batches == [["a", "b"]], "both calls were in the one failed batch"
        assert all(isinstance(o, RuntimeError) for o in outcomes)

    run(scenario())


def test_a_malformed_result_fails_calls_instead_of_hanging_them() -> None:
    class ShortPool(GatedPool):
        async def embed(self, texts: list[str], interactive: bool = False) -> BatchResult:
            return BatchResult(np.zeros((0, 1), dtype=np.float32), [], [])

    async def scenario() -> None:
        b = batcher(ShortPool())
        b.start()
        with pytest.raises(IndexError):
            await asyncio.wait_for(b.embed(["a"], wait=False), 5)
        await b.stop()

    run(scenario())


def test_batches_group_texts_of_similar_length_and_always_take_the_oldest() -> None:
    """Padding to the longest text of a batch wastes least when its texts are
    alike in length; the oldest queued text is always in the next batch, so
    sorting never starves a text."""

    async def scenario() -> None:
        pool = GatedPool()
        pool.gate.clear()
        b = batcher(pool, max_queued_texts=16)
        b.start()
        busy = asyncio.create_task(b.embed(["busy"], wait=False))
        await until(lambda: len(pool.batches) == 1, what="the worker took the first batch")
        long, short = "l" * 80, "s"
        texts = [long + str(i) if i % 2 == 0 else short + str(i) for i in range(8)]
        calls = [asyncio.create_task(b.embed([t], wait=False)) for t in texts]
        await until(lambda: b.queued == 8, what="every call queued")
        pool.gate.set()
        results = await asyncio.gather(busy, *calls)
        await b.stop()
        assert pool.batches[1:] == [texts[0::2], texts[1::2]]
        assert [float(r.vectors[0][0]) for r in results[1:]] == [len(t) for t in texts]

    run(scenario())


class HeldPool:
    """Holds every batch until the test releases that batch."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[str], asyncio.Event]] = []

    async def embed(self, texts: list[str], interactive: bool = False) -> BatchResult:
        release = asyncio.Event()
        self.batches.append((list(texts), release))
        await release.wait()
        vectors = np.array([[float(len(t))] for t in texts], dtype=np.float32)
        return BatchResult(vectors, [len(t) for t in texts], [False] * len(texts))

    def release_all(self) -> None:
        for _, release in self.batches:
            release.set()


def test_a_query_takes_the_express_worker_while_bulk_work_holds_the_others() -> None:
    async def scenario() -> None:
        pool = HeldPool()
        b = batcher(pool, max_queued_texts=16, express_slots=1)
        b.start()
        bulk = asyncio.create_task(b.embed([f"bulk-{i}" for i in range(8)], wait=True))
        await until(lambda: len(pool.batches) == 1, what="the bulk worker took a batch")
        query = asyncio.create_task(b.embed(["query"], wait=False))
        await until(lambda: len(pool.batches) == 2, what="a second batch dispatched")
        # The second batch is the query's: bulk may hold only the one bulk worker.
        assert [texts for texts, _ in pool.batches] == [[f"bulk-{i}" for i in range(4)], ["query"]]
        pool.batches[1][1].set()
        assert (await query).token_counts == [5]
        assert not bulk.done()
        pool.batches[0][1].set()
        await until(lambda: len(pool.batches) == 3, what="the rest of the bulk call dispatched")
        pool.release_all()
        await asyncio.wait_for(bulk, 5)
        await b.stop()

    run(scenario())


def test_without_express_workers_a_query_still_goes_before_queued_bulk_texts() -> None:
    async def scenario() -> None:
        pool = HeldPool()
        b = batcher(pool, max_queued_texts=16)
        b.start()
        bulk = asyncio.create_task(b.embed([f"bulk-{i}" for i in range(8)], wait=True))
        await until(lambda: len(pool.batches) == 1, what="the only worker took a bulk batch")
        query = asyncio.create_task(b.embed(["query"], wait=False))
        await until(lambda: b.queued == 5, what="the query queued behind 4 bulk texts")
        assert len(pool.batches) == 1, "no express worker: the query waits for the one worker"
        pool.batches[0][1].set()
        await until(lambda: len(pool.batches) == 2, what="the worker took its next batch")
        assert [texts for texts, _ in pool.batches][1:] == [["query"]]
        pool.batches[1][1].set()
        await asyncio.wait_for(query, 5)
        await until(lambda: len(pool.batches) == 3, what="the rest of the bulk call dispatched")
        pool.release_all()
        await asyncio.wait_for(bulk, 5)
        await b.stop()

    run(scenario())


def test_bulk_texts_are_grouped_by_their_counted_tokens() -> None:
    """With a token counter, bulk batches group texts by what the model will
    actually see, not by their characters: here counting pairs each long
    looking text with a short looking one."""
    texts = [("x" * 60 if i % 2 == 0 else "y") + str(i) for i in range(8)]
    tokens = {text: 3 if i % 4 < 2 else 40 for i, text in enumerate(texts)}
    counted: list[list[str]] = []

    def counter(batch: Sequence[str]) -> list[int]:
        counted.append(list(batch))
        return [tokens[t] for t in batch]

    async def scenario() -> None:
        pool = GatedPool()
        pool.gate.clear()
        b = batcher(pool, max_queued_texts=16, token_counter=counter)
        b.start()
        busy = asyncio.create_task(b.embed(["busy"], wait=False))
        await until(lambda: len(pool.batches) == 1, what="the worker took the first batch")
        bulk = asyncio.create_task(b.embed(texts, wait=True))
        await until(lambda: b.queued == 8, what="the bulk texts counted and queued")
        pool.gate.set()
        await asyncio.gather(busy, bulk)
        await b.stop()
        assert counted == [texts]  # bulk texts only: the query was estimated
        assert pool.batches[1:] == [
            [texts[0], texts[1], texts[4], texts[5]],
            [texts[2], texts[3], texts[6], texts[7]],
        ]

    run(scenario())
