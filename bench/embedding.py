"""Embedding throughput: the vector service against in-process
`SentenceTransformer.encode` (the original single-process design).

* denominator: `encode` in this process with the service's thread budget, the
  best of batch sizes 32/64/128;
* `embed_stream_ratio`: `EmbedStream` in batches of 64 texts;
* `embed_concurrent_ratio`: 16 concurrent clients, one text per `Embed` call
  (asyncio clients in this process: the cheapest Python client there is, so
  the client steals as little of the two cores as possible).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator

import grpc

from askmojo.vector.v1 import embedding_service_pb2 as epb
from askmojo.vector.v1 import embedding_service_pb2_grpc as epb_grpc
from bench.context import Context, Ratio, baseline_model
from bench.corpora import short_texts
from bench.timing import median_rate

STREAM_BATCH = 64
CLIENTS = 16


def in_process(ctx: Context, texts: list[str]) -> tuple[float, int]:
    model = baseline_model(ctx.thread_budget)
    best = (0.0, 0)
    for batch_size in (32, 64, 128):
        encode = functools.partial(
            model.encode, texts, batch_size=batch_size, normalize_embeddings=True
        )
        best = max(best, (median_rate(encode, len(texts), ctx.sizes.repeat), batch_size))
    return best


def embed_stream(address: str, texts: list[str], repeat: int) -> float:
    def requests() -> Iterator[epb.EmbedStreamRequest]:
        for start in range(0, len(texts), STREAM_BATCH):
            yield epb.EmbedStreamRequest(
                texts=texts[start : start + STREAM_BATCH], batch_id=str(start)
            )

    with grpc.insecure_channel(address) as channel:
        stub = epb_grpc.EmbeddingServiceStub(channel)

        def run() -> None:
            for response in stub.EmbedStream(requests(), timeout=600):
                if response.status.code:
                    raise RuntimeError(response.status.message)

        return median_rate(run, len(texts), repeat)


async def _concurrent_once(address: str, texts: list[str]) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = epb_grpc.EmbeddingServiceStub(channel)

        async def client(index: int) -> None:
            for text in texts[index::CLIENTS]:
                await stub.Embed(epb.EmbedRequest(texts=[text]), timeout=60)

        await asyncio.gather(*(client(i) for i in range(CLIENTS)))


def embed_concurrent(address: str, texts: list[str], repeat: int) -> float:
    return median_rate(lambda: asyncio.run(_concurrent_once(address, texts)), len(texts), repeat)


def run(ctx: Context) -> None:
    texts = short_texts(ctx.sizes.embed_texts)
    baseline, batch_size = in_process(ctx, texts)
    label = f"in-process encode, {ctx.thread_budget} threads, batch_size={batch_size}"
    address = ctx.vector_service().address
    stream = embed_stream(address, texts, ctx.sizes.repeat)
    ctx.ratio(
        Ratio(
            "embed_stream_ratio",
            stream,
            "EmbedStream, batches of 64",
            baseline,
            label,
            "texts/s",
            0.90,
        )
    )
    concurrent = embed_concurrent(address, texts[: ctx.sizes.concurrent_texts], ctx.sizes.repeat)
    ctx.ratio(
        Ratio(
            "embed_concurrent_ratio",
            concurrent,
            f"{CLIENTS} concurrent clients, 1 text per Embed",
            baseline,
            label,
            "texts/s",
            0.60,
        )
    )
