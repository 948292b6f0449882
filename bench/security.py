"""What operating securely costs (issue #12): the pair with `API_KEY` set and
both Prometheus endpoints on (and scraped), against the same pair without
them, in one run on the same machine.

* `secured_search_ratio`: `Search` QPS (8 concurrent clients, each call
  carrying the key) through the secured pair over the plain pair;
* `secured_embed_concurrent_ratio`: 16 concurrent single-text `Embed`
  clients on the secured vector service over the plain one.

Target 0.97 for both: keys and metrics may cost at most 3% of what
`search_ratio` and `embed_concurrent_ratio` measure. Each repetition times
both sides back to back, alternating which goes first so the machine's drift
favours neither, and each ratio is the median of the repetitions' ratios.
The two pairs hold the same documents; a thread scrapes both /metrics
endpoints every SCRAPE_SECONDS throughout, as Prometheus would (more often
than its 15 s default, so the scrape's own cost is not hidden).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import urllib.request
from collections.abc import Callable, Iterator, Sequence

import grpc

from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from bench.context import Context, Ratio
from bench.corpora import short_texts
from bench.embedding import CLIENTS, embed_concurrent
from bench.pipeline import SEARCH_CLIENTS, TOP_K, ingest_stream, search_clients
from bench.services import ServiceProcess, free_port
from bench.timing import median_pair, median_rate
from evals.known_item import corpus

API_KEY = "bench-secured-key-0123456789abcdef"
KEY_METADATA = (("authorization", f"Bearer {API_KEY}"),)
SCRAPE_SECONDS = 2.0


def run(ctx: Context) -> None:
    documents, items = corpus(modules=ctx.sizes.secured_docs)
    queries = [i.query for i in items]
    wanted = ctx.sizes.secured_queries
    queries = (queries * (wanted // len(queries) + 1))[:wanted]
    texts = short_texts(ctx.sizes.secured_texts, seed=31)
    plain_vector = ctx.vector_service()
    vector_metrics, metadata_metrics = free_port(), free_port()
    secured_vector = ServiceProcess(
        "vector_service",
        free_port(),
        {
            "CHROMADB_PERSIST_DIRECTORY": str(ctx.dir("secured-chroma")),
            "VECTOR_HOST": "127.0.0.1",
            "API_KEY": API_KEY,
            "VECTOR_METRICS_PORT": str(vector_metrics),
        },
        ctx.workdir / "secured-vector.log",
    )
    secured_vector.env["VECTOR_PORT"] = str(secured_vector.port)
    plain = ctx.metadata_service("plain", ctx.dir("plain") / "metadata.db")
    secured = ctx.metadata_service(
        "secured",
        ctx.dir("secured") / "metadata.db",
        API_KEY=API_KEY,
        METADATA_METRICS_PORT=str(metadata_metrics),
        VECTOR_SERVICE_ADDRESS=secured_vector.address,
    )
    with secured_vector, plain, secured, _scraping(vector_metrics, metadata_metrics):
        for service, metadata in ((plain, ()), (secured, KEY_METADATA)):
            with grpc.insecure_channel(service.address) as channel:
                stub = pb_grpc.MetadataServiceStub(channel)
                stub.CreateCollection(pb.CreateCollectionRequest(name="real"), metadata=metadata)
                ingest_stream(stub, "real", documents, metadata=metadata)

        def search(address: str, metadata: Sequence[tuple[str, str]]) -> Callable[[], object]:
            return lambda: asyncio.run(search_clients(address, "real", queries, metadata))

        search_pairs = _pairs(
            ctx,
            search(secured.address, KEY_METADATA),
            search(plain.address, ()),
            len(queries),
        )
        embed_pairs = _pairs(
            ctx,
            embed_concurrent(secured_vector.address, texts, KEY_METADATA),
            embed_concurrent(plain_vector.address, texts),
            len(texts),
        )
    numerator, denominator = median_pair(search_pairs)
    ctx.ratio(
        Ratio(
            "secured_search_ratio",
            numerator,
            f"Search, {SEARCH_CLIENTS} clients, top_k={TOP_K}, API_KEY + metrics on",
            denominator,
            "the same without key or metrics",
            "queries/s",
            0.97,
        )
    )
    numerator, denominator = median_pair(embed_pairs)
    ctx.ratio(
        Ratio(
            "secured_embed_concurrent_ratio",
            numerator,
            f"{CLIENTS} clients x 1 text per Embed, API_KEY + metrics on",
            denominator,
            "the same without key or metrics",
            "texts/s",
            0.97,
        )
    )


def _pairs(
    ctx: Context, secured: Callable[[], object], plain: Callable[[], object], items: int
) -> list[tuple[float, float]]:
    """(secured rate, plain rate) per repetition, both warmed up first; the
    side timed first alternates. A full run takes 2 x REPEAT - 1 pairs (5):
    the cost sought is a few percent, so more pairs than a ratio against a
    baseline needs; a quick run, one."""
    secured(), plain()
    pairs = []
    for repetition in range(2 * ctx.sizes.repeat - 1):
        if repetition % 2:
            plain_rate = median_rate(plain, items, 1, warm_up=False)
            secured_rate = median_rate(secured, items, 1, warm_up=False)
        else:
            secured_rate = median_rate(secured, items, 1, warm_up=False)
            plain_rate = median_rate(plain, items, 1, warm_up=False)
        pairs.append((secured_rate, plain_rate))
    return pairs


@contextlib.contextmanager
def _scraping(*ports: int) -> Iterator[None]:
    """Scrapes each /metrics endpoint every SCRAPE_SECONDS until the block
    ends; a scrape that fails (the service not up yet) is simply retried."""
    stop = threading.Event()

    def scrape() -> None:
        while not stop.wait(SCRAPE_SECONDS):
            for port in ports:
                url = f"http://127.0.0.1:{port}/metrics"
                with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5) as reply:
                    reply.read()

    thread = threading.Thread(target=scrape, name="bench-scraper", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)
