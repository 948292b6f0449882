"""The pair end to end, against the original single-process design: one
script that chunks, encodes, adds to Chroma and writes SQLite rows itself.

* `ingest_ratio`: `IngestDocuments` chunks/s until every document is INDEXED
  (the stream answers a document once its chunks are acknowledged by the
  vector service), over the in-process script's chunks/s: the corpus is
  ingested in `repeat` shares, each by both sides back to back, and the
  ratio is the median of the shares' pairs;
* `search_ratio`: `Search` QPS (HYBRID, the default) from 8 concurrent
  clients over the in-process loop doing the same work (encode the query,
  Chroma query, FTS5 bm25 query, reciprocal rank fusion, SQLite join of
  chunks and documents), the median of back-to-back pairs;
* latency: p50/p99 of one client's `Search` calls, idle and while a bulk
  ingest runs beside it;
* `scale_ingest_ratio`: chunks/s of the last `scale_small` chunks of a
  `scale_large`-chunk ingest over the first `scale_small` (short documents,
  SCALE_STREAM_DOCS per message, as a bulk loader sends them). Its two
  windows are a minute or more apart, so the VM's drift moves it (1.03 and
  0.81 in two runs of the same code): `scale_ingest_cpu_ms_per_chunk`
  beside it is the CPU time both services spent per chunk in each window,
  which a slower VM moves far less (time stolen by the host or by other
  guests is nobody's CPU time).
Corpus: the real one (stdlib module documentation) for ingest and search;
short texts for the scale run; passages for the bulk ingest under latency.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import grpc

from askmojo.common.filters import metadata_to_proto
from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from bench.context import Context, Ratio, baseline_model
from bench.corpora import metadata_for, passages, short_texts
from bench.timing import median_pair, percentile
from evals.known_item import Document, corpus
from metadata_service.chunking import chunk_tokens
from metadata_service.config import MetadataSettings
from metadata_service.db import keyword_index
from metadata_service.fusion import (
    FUSION_DEPTH,
    KEYWORD_FLOOR,
    above_floor,
    reciprocal_rank_fusion,
)
from metadata_service.tokenizer import PACKAGED_MODEL, tokenizer_for

# The service's defaults for a new collection: tokens of the model's own
# tokenizer, Markdown structure respected. The baseline chunks the same way,
# so both sides embed the same chunks.
_DEFAULTS = MetadataSettings.model_fields
CHUNK_SIZE = int(_DEFAULTS["default_chunk_size_tokens"].default)
CHUNK_OVERLAP = int(_DEFAULTS["default_chunk_overlap_tokens"].default)
TOP_K = 10
SEARCH_CLIENTS = 8
STREAM_DOCS = 16  # documents per IngestDocuments message
# Short documents go 64 to a message (~5 KB): each message costs the service
# a few fixed steps (a write, an index call, an answer), and at 16 short
# texts per message those dominate.
SCALE_STREAM_DOCS = 64


# --- the in-process baseline ------------------------------------------------------


class InProcessStore:
    """What the original app did in one process: sentence-transformers,
    embedded Chroma, sqlite3."""

    def __init__(self, ctx: Context, path: Path) -> None:
        import chromadb

        self.model = baseline_model(ctx.thread_budget)
        client = chromadb.PersistentClient(path=str(path / "chroma"))
        self.chroma = client.get_or_create_collection(
            "baseline", configuration={"hnsw": {"space": "cosine"}}
        )
        self.db = sqlite3.connect(path / "baseline.db", check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(
            """
            CREATE TABLE documents (id INTEGER PRIMARY KEY, external_id TEXT UNIQUE, text TEXT);
            CREATE TABLE metadata (document_id INTEGER, key TEXT, value TEXT);
            CREATE INDEX metadata_document ON metadata (document_id);
            CREATE TABLE chunks (id INTEGER PRIMARY KEY, document_id INTEGER,
                                 ordinal INTEGER, text TEXT, vector_id TEXT UNIQUE);
            -- The keyword index as the service keeps it (migration 0005).
            CREATE VIRTUAL TABLE chunks_fts USING fts5(
                text, content='chunks', content_rowid='id',
                tokenize='porter unicode61 remove_diacritics 2');
            CREATE TRIGGER chunks_fts_insert AFTER INSERT ON chunks BEGIN
                INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text);
            END;
            """
        )

    def ingest(self, documents: Sequence[Document], batch_chunks: int = 256) -> int:
        tokenizer = tokenizer_for(PACKAGED_MODEL)
        assert tokenizer is not None, "the packaged model's tokenizer is missing"
        rows = [
            (d, c)
            for d in documents
            for c in chunk_tokens(d.text, CHUNK_SIZE, CHUNK_OVERLAP, tokenizer)
        ]
        for start in range(0, len(rows), batch_chunks):
            part = rows[start : start + batch_chunks]
            texts = [c.text for _, c in part]
            vectors = self.model.encode(texts, batch_size=64, normalize_embeddings=True)
            ids = [f"{d.id}:{c.ordinal}" for d, c in part]
            self.chroma.add(
                ids=ids,
                embeddings=vectors,
                metadatas=[{"document_id": d.id, **d.metadata} for d, _ in part],
            )
            with self.db:
                for document in {d.id: d for d, _ in part}.values():
                    cursor = self.db.execute(
                        "INSERT OR IGNORE INTO documents (external_id, text) VALUES (?, ?)",
                        (document.id, document.text),
                    )
                    if cursor.rowcount:
                        self.db.executemany(
                            "INSERT INTO metadata VALUES (?, ?, ?)",
                            [(cursor.lastrowid, k, str(v)) for k, v in document.metadata.items()],
                        )
                self.db.executemany(
                    "INSERT INTO chunks (document_id, ordinal, text, vector_id) "
                    "SELECT id, ?, ?, ? FROM documents WHERE external_id = ?",
                    [(c.ordinal, c.text, f"{d.id}:{c.ordinal}", d.id) for d, c in part],
                )
        return len(rows)

    def search(self, query: str) -> list[tuple[Any, ...]]:
        """HYBRID as the service does it: dense and keyword candidates
        (FUSION_DEPTH x top_k each), the keyword hits above the floor,
        reciprocal rank fusion, then the join of the fused top_k."""
        vector = self.model.encode([query], normalize_embeddings=True)
        found = self.chroma.query(query_embeddings=vector, n_results=FUSION_DEPTH * TOP_K)
        dense = found["ids"][0]
        terms = keyword_index.query_terms(query)
        scored = (
            [
                (row[0], -row[1])  # bm25: lower is better
                for row in self.db.execute(
                    "SELECT c.vector_id, bm25(chunks_fts) AS s FROM chunks_fts "
                    "JOIN chunks c ON c.id = chunks_fts.rowid WHERE chunks_fts MATCH ? "
                    "ORDER BY s, c.id LIMIT ?",
                    (keyword_index.fts5_query(terms), FUSION_DEPTH * TOP_K),
                )
            ]
            if terms
            else []
        )
        keyword = above_floor(scored, KEYWORD_FLOOR)
        fused = reciprocal_rank_fusion([(dense, 1.0), (keyword, 1.0)])
        ids = [vector_id for vector_id, _ in fused[:TOP_K]]
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(
            "SELECT c.vector_id, d.external_id, c.text, m.key, m.value FROM chunks c "
            "JOIN documents d ON d.id = c.document_id "
            "LEFT JOIN metadata m ON m.document_id = d.id "
            f"WHERE c.vector_id IN ({marks})",
            ids,
        ).fetchall()
        return rows


# --- the services ------------------------------------------------------------------


def _requests(
    collection: str, documents: Sequence[Document], per_message: int, stop: threading.Event | None
) -> Iterator[pb.IngestDocumentsRequest]:
    for start in range(0, len(documents), per_message):
        if stop is not None and stop.is_set():
            return
        yield pb.IngestDocumentsRequest(
            collection=collection,
            documents=[
                pb.Document(id=d.id, text=d.text, metadata=metadata_to_proto(d.metadata))
                for d in documents[start : start + per_message]
            ],
        )


class Mark(NamedTuple):
    """Where an ingest stream was at one of its responses."""

    chunks: int  # acknowledged so far
    seconds: float  # time.perf_counter()
    cpu_seconds: float = 0.0  # the `cpu` given to ingest_stream, else 0


def ingest_stream(
    stub: pb_grpc.MetadataServiceStub,
    collection: str,
    documents: Sequence[Document],
    *,
    marks: list[Mark] | None = None,
    cpu: Callable[[], float] | None = None,
    stop: threading.Event | None = None,
    per_message: int = STREAM_DOCS,
    metadata: Sequence[tuple[str, str]] = (),
) -> int:
    """Streams `documents` (until `stop` is set); every one sent must come
    back INDEXED. Returns the chunk count; `marks` collects a Mark per
    response (with `cpu()` read then, when given)."""
    chunks = 0
    requests = _requests(collection, documents, per_message, stop)
    for response in stub.IngestDocuments(requests, timeout=3600, metadata=metadata):
        if response.status.code:
            raise RuntimeError(f"batch refused: {response.status.message}")
        for result in response.results:
            if result.state != pb.UPSERT_STATE_INDEXED:
                raise RuntimeError(f"{result.id} not indexed: {result.status.message}")
            chunks += result.chunk_count
        if marks is not None:
            marks.append(Mark(chunks, time.perf_counter(), cpu() if cpu is not None else 0.0))
    return chunks


async def search_clients(
    address: str,
    collection: str,
    queries: Sequence[str],
    metadata: Sequence[tuple[str, str]] = (),
) -> list[float]:
    """SEARCH_CLIENTS concurrent asyncio clients sharing `queries`; the
    latency of each call. `metadata`: sent with every call (an API key)."""
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.MetadataServiceStub(channel)

        async def client(index: int) -> None:
            for query in queries[index::SEARCH_CLIENTS]:
                started = time.perf_counter()
                response = await stub.Search(
                    pb.SearchRequest(collection=collection, query=query, top_k=TOP_K),
                    timeout=60,
                    metadata=metadata,
                )
                latencies.append(time.perf_counter() - started)
                assert response.hits

        await asyncio.gather(*(client(i) for i in range(SEARCH_CLIENTS)))
    return latencies


def search_latencies(
    stub: pb_grpc.MetadataServiceStub, collection: str, queries: Sequence[str]
) -> list[float]:
    latencies = []
    for query in queries:
        started = time.perf_counter()
        stub.Search(pb.SearchRequest(collection=collection, query=query, top_k=TOP_K), timeout=60)
        latencies.append(time.perf_counter() - started)
    return latencies


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _docs(texts: Sequence[str], prefix: str) -> list[Document]:
    return [Document(f"{prefix}-{i:06d}", t, metadata_for(i)) for i, t in enumerate(texts)]  # type: ignore[arg-type]


def run(ctx: Context) -> None:
    documents, items = corpus(modules=ctx.sizes.ingest_docs)
    queries = [i.query for i in items]
    queries = (queries * (ctx.sizes.search_queries // len(queries) + 1))[: ctx.sizes.search_queries]
    store = InProcessStore(ctx, ctx.dir("baseline"))
    store.model.encode(["warm up"] * 64)
    ctx.vector_service()
    service = ctx.metadata_service("pipeline", ctx.dir("pipeline") / "metadata.db")
    with service, grpc.insecure_channel(service.address) as channel:
        stub = pb_grpc.MetadataServiceStub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(name="warmup"))
        ingest_stream(stub, "warmup", documents[:5])
        stub.CreateCollection(pb.CreateCollectionRequest(name="real"))
        ingest(ctx, stub, store, documents)
        asyncio.run(search_clients(service.address, "real", queries[:16]))  # warm-up
        for query in queries[:10]:
            store.search(query)
        pairs = []
        for _ in range(ctx.sizes.repeat):  # back to back: see timing.median_pair
            started = time.perf_counter()
            asyncio.run(search_clients(service.address, "real", queries))
            qps = len(queries) / (time.perf_counter() - started)
            started = time.perf_counter()
            for query in queries:
                store.search(query)
            pairs.append((qps, len(queries) / (time.perf_counter() - started)))
        qps, baseline_qps = median_pair(pairs)
        ctx.ratio(
            Ratio(
                "search_ratio",
                qps,
                f"Search (HYBRID), {SEARCH_CLIENTS} concurrent clients, top_k={TOP_K}",
                baseline_qps,
                "in-process encode + Chroma query + FTS5 bm25 + rank fusion + SQLite join, "
                "one loop",
                "queries/s",
                0.80,
            )
        )
        latency_under_ingest(ctx, stub, queries[: ctx.sizes.latency_queries])
        ctx.measure(
            "memory_mib",
            {"metadata": service.rss_mib(), "vector": ctx.vector_service().rss_mib()},
        )
        scale(ctx, stub, lambda: service.cpu_seconds() + ctx.vector_service().cpu_seconds())


def ingest(
    ctx: Context,
    stub: pb_grpc.MetadataServiceStub,
    store: InProcessStore,
    documents: Sequence[Document],
) -> None:
    """The corpus in `repeat` shares (every repeat-th module, so the shares
    are alike in size), each ingested by the service into "real" and by the
    baseline into its store, back to back; both end up holding all of it for
    the search pairs."""
    pairs = []
    chunks = 0
    for part in range(ctx.sizes.repeat):
        share = documents[part :: ctx.sizes.repeat]
        started = time.perf_counter()
        service_chunks = ingest_stream(stub, "real", share)
        service_rate = service_chunks / (time.perf_counter() - started)
        started = time.perf_counter()
        baseline_chunks = store.ingest(share)
        baseline_rate = baseline_chunks / (time.perf_counter() - started)
        if service_chunks != baseline_chunks:
            raise RuntimeError(
                f"chunk counts differ: service {service_chunks}, baseline {baseline_chunks}"
            )
        chunks += service_chunks
        pairs.append((service_rate, baseline_rate))
    service_ingest, baseline_ingest = median_pair(pairs)
    ctx.ratio(
        Ratio(
            "ingest_ratio",
            service_ingest,
            f"IngestDocuments, {len(documents)} docs / {chunks} chunks in {len(pairs)} share(s), "
            "until INDEXED",
            baseline_ingest,
            "in-process encode + Chroma add + SQLite rows",
            "chunks/s",
            0.90,
        )
    )


def latency_under_ingest(
    ctx: Context, stub: pb_grpc.MetadataServiceStub, queries: Sequence[str]
) -> None:
    """One client's Search latencies idle, then while a bulk ingest of
    passages streams into another collection."""
    idle = search_latencies(stub, "real", queries)
    stub.CreateCollection(pb.CreateCollectionRequest(name="bulk"))
    # More passages than the searches need: the stream ends when they do.
    bulk = _docs(passages(len(queries) * 4), "bulk")
    errors: list[BaseException] = []
    searches_done = threading.Event()
    marks: list[Mark] = []

    def bulk_ingest() -> None:
        try:
            ingest_stream(stub, "bulk", bulk, marks=marks, stop=searches_done)
        except BaseException as exc:  # reported below
            errors.append(exc)

    writer = threading.Thread(target=bulk_ingest)
    writer.start()
    # The searches start once the bulk stream is flowing: its first answer came.
    deadline = time.monotonic() + 120
    while not marks and writer.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    busy = search_latencies(stub, "real", queries)
    overlapped = writer.is_alive()
    searches_done.set()
    writer.join()
    if errors:
        raise errors[0]
    p99_idle, p99_busy = percentile(idle, 99), percentile(busy, 99)
    ctx.measure(
        "search_latency_ms",
        {
            "idle": {"p50": _ms(percentile(idle, 50)), "p99": _ms(p99_idle)},
            "during_bulk_ingest": {"p50": _ms(percentile(busy, 50)), "p99": _ms(p99_busy)},
            "p99_ratio": round(p99_busy / p99_idle, 2),
            "p99_ratio_target": 3.0,
            "ingest_still_running_after_the_searches": overlapped,
            "queries": len(queries),
        },
    )


def scale(ctx: Context, stub: pb_grpc.MetadataServiceStub, cpu: Callable[[], float]) -> None:
    """`cpu`: the CPU seconds both services (and their workers) spent so far."""
    small, large = ctx.sizes.scale_small, ctx.sizes.scale_large
    stub.CreateCollection(pb.CreateCollectionRequest(name="scale"))
    documents = _docs(short_texts(large, seed=17), "scale")
    marks = [Mark(0, time.perf_counter(), cpu())]
    ingest_stream(stub, "scale", documents, marks=marks, cpu=cpu, per_message=SCALE_STREAM_DOCS)
    ctx.ratio(
        Ratio(
            "scale_ingest_ratio",
            _window_rate(marks, large - small, large),
            f"chunks {large - small}-{large} of one {large}-chunk ingest, "
            f"{SCALE_STREAM_DOCS} short docs per message",
            _window_rate(marks, 0, small),
            f"chunks 0-{small} of the same ingest",
            "chunks/s",
            0.85,
        )
    )
    early = _window_cpu_ms(marks, 0, small)
    late = _window_cpu_ms(marks, large - small, large)
    ctx.measure(
        "scale_ingest_cpu_ms_per_chunk",
        {
            "first_window": round(early, 3),
            "last_window": round(late, 3),
            # Above 1: each chunk costs more CPU in the larger store.
            "last_over_first": round(late / early, 3) if early else 0.0,
            "note": "both services with their embedding workers; the windows of scale_ingest_ratio",
        },
    )


def _window(marks: Sequence[Mark], low: int, high: int) -> tuple[Mark, Mark]:
    """The first mark at or past `low` chunks and the first at or past `high`."""
    return next(m for m in marks if m.chunks >= low), next(m for m in marks if m.chunks >= high)


def _window_rate(marks: Sequence[Mark], low: int, high: int) -> float:
    """Chunks/s within the window."""
    start, end = _window(marks, low, high)
    return (end.chunks - start.chunks) / (end.seconds - start.seconds)


def _window_cpu_ms(marks: Sequence[Mark], low: int, high: int) -> float:
    """CPU milliseconds per chunk within the window."""
    start, end = _window(marks, low, high)
    return 1000 * (end.cpu_seconds - start.cpu_seconds) / (end.chunks - start.chunks)
