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
The two pairs are alike but for the key and metrics: each has a vector
service of its own, started the same way, and both hold the same documents
(the plain side does not reuse the run's shared vector service, whose Chroma
holds the other sections' collections). A thread scrapes both /metrics
endpoints every SCRAPE_SECONDS throughout, as Prometheus would (more often
than its 15 s default, so the scrape's own cost is not hidden).

The cost sought is a few percent and this machine's speed drifts by more
within a minute, so a full run takes many short pairs (9, against 3 for
the other sections' ratios). Beside the ratios, `secured_cpu_per_call` reports the CPU time
the services' processes (workers included) spent per call on each side,
read from /proc: a figure the drift moves far less than a rate, which says
what the key and metrics cost whatever the wall clock did.
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
    vector_metrics, metadata_metrics = free_port(), free_port()
    plain_vector = _vector_service(ctx, "plain")
    secured_vector = _vector_service(
        ctx, "secured", API_KEY=API_KEY, VECTOR_METRICS_PORT=str(vector_metrics)
    )
    plain = ctx.metadata_service(
        "plain", ctx.dir("plain") / "metadata.db", VECTOR_SERVICE_ADDRESS=plain_vector.address
    )
    secured = ctx.metadata_service(
        "secured",
        ctx.dir("secured") / "metadata.db",
        API_KEY=API_KEY,
        METADATA_METRICS_PORT=str(metadata_metrics),
        VECTOR_SERVICE_ADDRESS=secured_vector.address,
    )
    with (
        plain_vector,
        secured_vector,
        plain,
        secured,
        _scraping(vector_metrics, metadata_metrics),
    ):
        for service, metadata in ((plain, ()), (secured, KEY_METADATA)):
            with grpc.insecure_channel(service.address) as channel:
                stub = pb_grpc.MetadataServiceStub(channel)
                stub.CreateCollection(pb.CreateCollectionRequest(name="real"), metadata=metadata)
                ingest_stream(stub, "real", documents, metadata=metadata)

        def search(address: str, metadata: Sequence[tuple[str, str]]) -> Callable[[], object]:
            return lambda: asyncio.run(search_clients(address, "real", queries, metadata))

        search_side = _Side(search(secured.address, KEY_METADATA), (secured, secured_vector))
        search_plain = _Side(search(plain.address, ()), (plain, plain_vector))
        search_pairs = _pairs(ctx, search_side, search_plain, len(queries))
        embed_side = _Side(
            embed_concurrent(secured_vector.address, texts, KEY_METADATA), (secured_vector,)
        )
        embed_plain = _Side(embed_concurrent(plain_vector.address, texts), (plain_vector,))
        embed_pairs = _pairs(ctx, embed_side, embed_plain, len(texts))
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
    ctx.measure(
        "secured_cpu_per_call",
        {
            "pairs": len(search_pairs),
            "search_ms": _cpu_figures(search_side, search_plain, len(queries)),
            "embed_ms": _cpu_figures(embed_side, embed_plain, len(texts)),
        },
    )


def _vector_service(ctx: Context, name: str, **env: str) -> ServiceProcess:
    service = ServiceProcess(
        "vector_service",
        free_port(),
        {"CHROMADB_PERSIST_DIRECTORY": str(ctx.dir(f"{name}-chroma")), "VECTOR_HOST": "127.0.0.1"}
        | env,
        ctx.workdir / f"{name}-vector.log",
    )
    service.env["VECTOR_PORT"] = str(service.port)
    return service


class _Side:
    """One side of a comparison: how to run its load once, and the services
    whose CPU time it spends (summed over every timed run)."""

    def __init__(self, run: Callable[[], object], services: Sequence[ServiceProcess]) -> None:
        self.run = run
        self.services = services
        self.cpu_seconds = 0.0
        self.runs = 0

    def timed(self, items: int) -> float:
        """Items per second of one run; adds the run's CPU time."""
        cpu = sum(s.cpu_seconds() for s in self.services)
        rate = median_rate(self.run, items, 1, warm_up=False)
        self.cpu_seconds += sum(s.cpu_seconds() for s in self.services) - cpu
        self.runs += 1
        return rate


def _cpu_figures(secured: _Side, plain: _Side, items: int) -> dict[str, float]:
    """CPU milliseconds per call on each side, and secured over plain (the
    cost: 1.03 is 3% more CPU per call)."""
    per_call = [
        1000 * side.cpu_seconds / (side.runs * items) if side.runs else 0.0
        for side in (secured, plain)
    ]
    return {
        "secured": round(per_call[0], 3),
        "plain": round(per_call[1], 3),
        "ratio": round(per_call[0] / per_call[1], 3) if per_call[1] else 0.0,
    }


def _pairs(ctx: Context, secured: _Side, plain: _Side, items: int) -> list[tuple[float, float]]:
    """(secured rate, plain rate) per pair, both warmed up first; the side
    timed first alternates, so a steady drift favours neither. A full run
    (repeat 3) takes 9 pairs; a quick run (repeat 1), one."""
    secured.run(), plain.run()
    pairs = []
    # Many short pairs (see the module's docstring): 9 for repeat 3.
    for index in range(4 * ctx.sizes.repeat - 3):
        if index % 2:
            plain_rate = plain.timed(items)
            secured_rate = secured.timed(items)
        else:
            secured_rate = secured.timed(items)
            plain_rate = plain.timed(items)
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
