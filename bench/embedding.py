"""Embedding throughput: the vector service against in-process
`SentenceTransformer.encode` (the original single-process design).

* denominator: `encode` in this process with the service's thread budget, at
  the best of batch sizes 32/64/128;
* `embed_stream_ratio`: `EmbedStream` in batches of 64 texts;
* `embed_concurrent_ratio`: 16 concurrent clients, one text per `Embed` call
  (asyncio clients in this process: the cheapest Python client there is, so
  the client steals as little of the two cores as possible).

Each repetition times the baseline and then the service back to back, and a
ratio is the median of the repetitions' ratios (timing.median_pair).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterator, Sequence

import grpc

from askmojo.vector.v1 import embedding_service_pb2 as epb
from askmojo.vector.v1 import embedding_service_pb2_grpc as epb_grpc
from bench.context import Context, Ratio, baseline_model
from bench.corpora import short_texts
from bench.timing import median_pair, median_rate

STREAM_BATCH = 64
CLIENTS = 16


def in_process(ctx: Context, texts: list[str]) -> tuple[Callable[[], object], int]:
    """`encode` of all `texts` at the batch size it does best with here (one
    timed run of each, after one warm-up), and that batch size."""
    model = baseline_model(ctx.thread_budget)
    model.encode(texts, batch_size=64, normalize_embeddings=True)  # warm-up
    best = (0.0, 0)
    for batch_size in (32, 64, 128):
        encode = functools.partial(
            model.encode, texts, batch_size=batch_size, normalize_embeddings=True
        )
        best = max(best, (median_rate(encode, len(texts), 1, warm_up=False), batch_size))
    batch_size = best[1]
    return (
        functools.partial(model.encode, texts, batch_size=batch_size, normalize_embeddings=True),
        batch_size,
    )


def embed_stream(address: str, texts: list[str]) -> Callable[[], object]:
    """One EmbedStream of all `texts`, on a channel of its own."""

    def requests() -> Iterator[epb.EmbedStreamRequest]:
        for start in range(0, len(texts), STREAM_BATCH):
            yield epb.EmbedStreamRequest(
                texts=texts[start : start + STREAM_BATCH], batch_id=str(start)
            )

    def run() -> None:
        with grpc.insecure_channel(address) as channel:
            stub = epb_grpc.EmbeddingServiceStub(channel)
            for response in stub.EmbedStream(requests(), timeout=600):
                if response.status.code:
                    raise RuntimeError(response.status.message)

    return run


async def _concurrent_once(
    address: str, texts: list[str], metadata: Sequence[tuple[str, str]] = ()
) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = epb_grpc.EmbeddingServiceStub(channel)

        async def client(index: int) -> None:
            for text in texts[index::CLIENTS]:
                await stub.Embed(epb.EmbedRequest(texts=[text]), timeout=60, metadata=metadata)

        await asyncio.gather(*(client(i) for i in range(CLIENTS)))


def embed_concurrent(
    address: str, texts: list[str], metadata: Sequence[tuple[str, str]] = ()
) -> Callable[[], object]:
    """CLIENTS concurrent clients, one text per Embed call; `metadata` is
    sent with every call (an API key)."""
    return lambda: asyncio.run(_concurrent_once(address, texts, metadata))


def run(ctx: Context) -> None:
    texts = short_texts(ctx.sizes.embed_texts)
    concurrent_texts = texts[: ctx.sizes.concurrent_texts]
    encode, batch_size = in_process(ctx, texts)
    label = f"in-process encode, {ctx.thread_budget} threads, batch_size={batch_size}"
    address = ctx.vector_service().address
    stream = embed_stream(address, texts)
    concurrent = embed_concurrent(address, concurrent_texts)
    stream(), concurrent()  # warm-up
    # Each repetition measures the baseline and then both service figures
    # back to back; each ratio is the median of its repetitions' ratios.
    stream_pairs, concurrent_pairs = [], []
    for _ in range(ctx.sizes.repeat):
        baseline = median_rate(encode, len(texts), 1, warm_up=False)
        stream_pairs.append((median_rate(stream, len(texts), 1, warm_up=False), baseline))
        concurrent_rate = median_rate(concurrent, len(concurrent_texts), 1, warm_up=False)
        concurrent_pairs.append((concurrent_rate, baseline))
    numerator, denominator = median_pair(stream_pairs)
    ctx.ratio(
        Ratio(
            "embed_stream_ratio",
            numerator,
            f"EmbedStream, batches of {STREAM_BATCH}",
            denominator,
            label,
            "texts/s",
            0.90,
        )
    )
    numerator, denominator = median_pair(concurrent_pairs)
    ctx.ratio(
        Ratio(
            "embed_concurrent_ratio",
            numerator,
            f"{CLIENTS} concurrent clients, 1 text per Embed",
            denominator,
            label,
            "texts/s",
            0.60,
        )
    )
