"""What operating securely costs (issue #12): the pair with `API_KEY` set and
both Prometheus endpoints on (and scraped), against the same pair without
them, in one run on the same machine.

* `secured_search_ratio`: `Search` QPS (8 concurrent clients, each call
  carrying the key) through the secured pair over the plain pair;
* `secured_embed_concurrent_ratio`: 16 concurrent single-text `Embed`
  clients on the secured vector service over plain ones.

Target 0.97 for both: keys and metrics may cost at most 3% of what
`search_ratio` and `embed_concurrent_ratio` measure. Each side has services
of its own, started the same way and holding the same documents (the plain
side does not reuse the run's shared vector service, whose Chroma holds the
other sections' collections). A thread scrapes every /metrics endpoint each
SCRAPE_SECONDS throughout, as Prometheus would (more often than its 15 s
default, so the scrape's own cost is not hidden).

The cost sought is a few percent; this machine's speed drifts by more within
a minute, and two identical vector services differ by more too in
concurrent Embed throughput (measured: 0.95-1.07 over runs of 12-24 rounds;
per round by 7-10%, the dynamic batcher forming different batches). So:

* many short rounds (9, against 3 for the other sections' ratios), the order
  of the sides rotated through every permutation so the drift favours none;
* the Embed comparison is bracketed: two plain vector services, one started
  before the secured one and one after, and the secured rate is compared
  with their geometric mean each round. Their own ratio is reported
  (`secured_plain_spread`): the noise floor of the comparison, what two
  services alike in every setting differ by in this run;
* each ratio is the geometric mean of the rounds' ratios (a finer estimate
  than their median, for the same rounds).

Beside the ratios, `secured_cpu_per_call` reports the CPU time the services'
processes spent per call on each side, read from /proc, in total (workers
included, which the batching moves) and in the service process alone (where
the key check and the metrics run): figures the drift moves far less than a
rate, which say what the key and metrics cost whatever the wall clock did.

And `secured_interceptors_us_per_call` isolates what the security layers
themselves cost: in this process, over real sockets, two gRPC servers with
one method of the vector service that answers at once (Count), one behind
the vector service's plain interceptor chain and one behind its secured
chain (the key check, RPC metrics recording), driven in alternate rounds by
the same 16 clients all sending the key; the CPU microseconds per call of
each (clients included, alike on both sides) and the difference, beside
the service process's CPU per plain Embed call it adds to.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import statistics
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence

import grpc
from pydantic import SecretStr

from askmojo.common import metrics, serving
from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from askmojo.vector.v1 import vector_service_pb2 as vpb
from bench.context import Context, Ratio
from bench.corpora import short_texts
from bench.embedding import CLIENTS, embed_concurrent
from bench.pipeline import SEARCH_CLIENTS, TOP_K, ingest_stream, search_clients
from bench.services import ServiceProcess, free_port
from bench.timing import geometric_mean_pair, median_rate
from evals.known_item import corpus
from vector_service.config import VectorSettings

API_KEY = "bench-secured-key-0123456789abcdef"
KEY_METADATA = (("authorization", f"Bearer {API_KEY}"),)
SCRAPE_SECONDS = 2.0
# The interceptor comparison: calls per side per round (16 clients), rounds.
CHAIN_CALLS = 1600
CHAIN_ROUNDS = 8
_COUNT = "/askmojo.vector.v1.VectorService/Count"


def run(ctx: Context) -> None:
    documents, items = corpus(modules=ctx.sizes.secured_docs)
    queries = [i.query for i in items]
    wanted = ctx.sizes.secured_queries
    queries = (queries * (wanted // len(queries) + 1))[:wanted]
    texts = short_texts(ctx.sizes.secured_texts, seed=31)
    metrics_ports = vector_metrics, metadata_metrics = free_port(), free_port()
    # Started in this order: the secured vector service between the two
    # plain ones (see the module's docstring).
    plain_vector = _vector_service(ctx, "plain")
    secured_vector = _vector_service(
        ctx, "secured", API_KEY=API_KEY, VECTOR_METRICS_PORT=str(vector_metrics)
    )
    plain_vector_after = _vector_service(ctx, "plain-after")
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
        plain_vector_after,
        plain,
        secured,
        _scraping(*metrics_ports),
    ):
        for service, metadata in ((plain, ()), (secured, KEY_METADATA)):
            with grpc.insecure_channel(service.address) as channel:
                stub = pb_grpc.MetadataServiceStub(channel)
                stub.CreateCollection(pb.CreateCollectionRequest(name="real"), metadata=metadata)
                ingest_stream(stub, "real", documents, metadata=metadata)

        def search(address: str, metadata: Sequence[tuple[str, str]]) -> Callable[[], object]:
            return lambda: asyncio.run(search_clients(address, "real", queries, metadata))

        search_secured = _Side(search(secured.address, KEY_METADATA), (secured, secured_vector))
        search_plain = _Side(search(plain.address, ()), (plain, plain_vector))
        search_rounds = _rounds(ctx, [search_secured, search_plain], len(queries))
        embed_secured = _Side(
            embed_concurrent(secured_vector.address, texts, KEY_METADATA), (secured_vector,)
        )
        embed_plain = _Side(embed_concurrent(plain_vector.address, texts), (plain_vector,))
        embed_plain_after = _Side(
            embed_concurrent(plain_vector_after.address, texts), (plain_vector_after,)
        )
        embed_rounds = _rounds(ctx, [embed_secured, embed_plain, embed_plain_after], len(texts))
    numerator, denominator = geometric_mean_pair([(s, p) for s, p in search_rounds])
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
    numerator, denominator = geometric_mean_pair(
        [(s, math.sqrt(p * q)) for s, p, q in embed_rounds]
    )
    ctx.ratio(
        Ratio(
            "secured_embed_concurrent_ratio",
            numerator,
            f"{CLIENTS} clients x 1 text per Embed, API_KEY + metrics on",
            denominator,
            "the same without key or metrics (two plain services, started before and after)",
            "texts/s",
            0.97,
        )
    )
    after, before = geometric_mean_pair([(q, p) for _, p, q in embed_rounds])
    ctx.measure(
        "secured_plain_spread",
        {
            "embed_plain_after_over_before": round(after / before, 3),
            "note": "two plain vector services alike in every setting: the comparison's noise",
        },
    )
    embed_ms = _cpu_figures([embed_secured], [embed_plain, embed_plain_after])
    ctx.measure(
        "secured_cpu_per_call",
        {
            "rounds": len(search_rounds),
            "search_ms": _cpu_figures([search_secured], [search_plain]),
            "embed_ms": embed_ms,
        },
    )
    chain = asyncio.run(_interceptor_cost(CHAIN_CALLS if ctx.sizes.repeat > 1 else 200))
    plain_embed_us = 1000 * embed_ms["service_process"]["plain"]
    ctx.measure(
        "secured_interceptors_us_per_call",
        chain
        | {
            "plain_embed_service_process_us": round(plain_embed_us, 1),
            # What the layers add to a single-text Embed in its service process.
            "added_share_of_embed": round(chain["added"] / plain_embed_us, 4)
            if plain_embed_us
            else 0.0,
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
    whose CPU time it spends (summed over every timed run), in total and in
    their service processes alone (without embedding workers)."""

    def __init__(self, run: Callable[[], object], services: Sequence[ServiceProcess]) -> None:
        self.run = run
        self.services = services
        self.cpu_seconds = 0.0
        self.service_cpu_seconds = 0.0
        self.calls = 0

    def timed(self, items: int) -> float:
        """Items per second of one run; adds the run's CPU time."""
        total, own = self._cpu()
        rate = median_rate(self.run, items, 1, warm_up=False)
        total_after, own_after = self._cpu()
        self.cpu_seconds += total_after - total
        self.service_cpu_seconds += own_after - own
        self.calls += items
        return rate

    def _cpu(self) -> tuple[float, float]:
        return (
            sum(s.cpu_seconds() for s in self.services),
            sum(s.own_cpu_seconds() for s in self.services),
        )


def _cpu_figures(secured: Sequence[_Side], plain: Sequence[_Side]) -> dict[str, dict[str, float]]:
    """CPU milliseconds per call on each side, and secured over plain (the
    cost: 1.03 is 3% more CPU per call): in total, and in the service
    processes alone."""

    def per_call(sides: Sequence[_Side], seconds: Callable[[_Side], float]) -> float:
        calls = sum(side.calls for side in sides)
        return 1000 * sum(seconds(side) for side in sides) / calls if calls else 0.0

    figures = {}
    for name, seconds in (
        ("total", lambda side: side.cpu_seconds),
        ("service_process", lambda side: side.service_cpu_seconds),
    ):
        ms = per_call(secured, seconds), per_call(plain, seconds)
        figures[name] = {
            "secured": round(ms[0], 3),
            "plain": round(ms[1], 3),
            "ratio": round(ms[0] / ms[1], 3) if ms[1] else 0.0,
        }
    return figures


def _rounds(ctx: Context, sides: Sequence[_Side], items: int) -> list[tuple[float, ...]]:
    """The sides' rates, one tuple per round (in `sides`' order), each side
    warmed up first. Each round runs the sides back to back in the next of
    their orders (every permutation in turn), so a steady drift, or a side
    that gains from following another, favours none. A full run (repeat 3)
    takes 9 rounds; a quick run (repeat 1), one."""
    for side in sides:
        side.run()
    orders = list(itertools.permutations(range(len(sides))))
    rounds = []
    for index in range(4 * ctx.sizes.repeat - 3):
        rates = [0.0] * len(sides)
        for position in orders[index % len(orders)]:
            rates[position] = sides[position].timed(items)
        rounds.append(tuple(rates))
    return rounds


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


async def _interceptor_cost(calls: int) -> dict[str, float]:
    """CPU microseconds per call behind the vector service's plain and
    secured interceptor chains (see the module's docstring): medians over
    CHAIN_ROUNDS rounds, the sides' order alternating, and the median of the
    rounds' differences."""
    plain_chain = serving.server_interceptors(VectorSettings(api_key=None), "vector")
    # Recording on, as a metrics port turns it on in the service.
    endpoint = metrics.MetricsEndpoint.listen("127.0.0.1", 0)
    try:
        secured_chain = serving.server_interceptors(
            VectorSettings(api_key=SecretStr(API_KEY)), "vector"
        )
        servers = [await _count_server(chain) for chain in (plain_chain, secured_chain)]
        try:
            per_round: list[tuple[float, float]] = []
            for index in range(CHAIN_ROUNDS + 1):  # the first warms both up
                figures = [0.0, 0.0]
                for side in (0, 1) if index % 2 else (1, 0):
                    figures[side] = await _cpu_us_per_call(servers[side][1], calls)
                if index:
                    per_round.append((figures[0], figures[1]))
        finally:
            for server, _ in servers:
                await server.stop(None)
    finally:
        endpoint.stop()
    return {
        "plain": round(statistics.median(p for p, _ in per_round), 1),
        "secured": round(statistics.median(s for _, s in per_round), 1),
        "added": round(statistics.median(s - p for p, s in per_round), 1),
    }


async def _count_server(interceptors: Sequence[object]) -> tuple[grpc.aio.Server, int]:
    async def count(_request: vpb.CountRequest, _context: object) -> vpb.CountResponse:
        return vpb.CountResponse(count=1)

    server = grpc.aio.server(interceptors=interceptors)
    service, _, method = _COUNT.lstrip("/").rpartition("/")
    handler = grpc.unary_unary_rpc_method_handler(
        count,
        request_deserializer=vpb.CountRequest.FromString,
        response_serializer=vpb.CountResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service, {method: handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def _cpu_us_per_call(port: int, calls: int) -> float:
    """CLIENTS concurrent clients calling Count `calls` times in all, each
    call with the key; this process's CPU microseconds per call."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        count = channel.unary_unary(
            _COUNT,
            request_serializer=vpb.CountRequest.SerializeToString,
            response_deserializer=vpb.CountResponse.FromString,
        )
        request = vpb.CountRequest(collection="bench")

        async def client(share: int) -> None:
            for _ in range(share):
                await count(request, metadata=KEY_METADATA)

        started = time.process_time()
        await asyncio.gather(*(client(calls // CLIENTS) for _ in range(CLIENTS)))
        return 1e6 * (time.process_time() - started) / (calls // CLIENTS * CLIENTS)
