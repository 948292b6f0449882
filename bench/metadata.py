"""The metadata write path alone (no vector service), and writer contention.

* `metadata_write_ratio`: documents/s through `UpsertDocuments` (production
  mode, WORKERS=2, fed by 4 writer processes, each with its own connection,
  two on each worker process) over SQLAlchemy Core executemany of the very
  rows the service writes (documents, typed metadata, chunks), prepared
  before the clock starts, one transaction per batch, same engine settings;
* contention: the same run's rows/s and count of "database is locked" errors
  (which must be 0: writes wait on `BEGIN IMMEDIATE` with a busy timeout).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy import insert

from askmojo.common.filters import metadata_to_proto
from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from bench.context import Context, Ratio
from bench.corpora import metadata_for, word_texts
from bench.services import ServiceProcess
from bench.timing import median_pair
from metadata_service.config import MetadataSettings
from metadata_service.db.document_queries import metadata_row
from metadata_service.db.engine import build_engine
from metadata_service.db.models import ChunkRow, CollectionRow, DocumentRow, MetadataRow, utcnow
from metadata_service.domain import ChunkingSpec, DocumentInput, IndexState
from metadata_service.server import prepare_database
from metadata_service.validation import prepare_document

BATCH = 100
WRITERS = 4
SERVICE_WORKERS = 2


def documents(count: int) -> list[DocumentInput]:
    return [
        DocumentInput(f"doc-{i:07d}", text, metadata_for(i))
        for i, text in enumerate(word_texts(count, 40, 120, seed=7))
    ]


def sqlalchemy_core(database: Path, docs: list[DocumentInput]) -> float:
    settings = MetadataSettings(database_url=f"sqlite:///{database}")
    prepare_database(settings)
    engine = build_engine(settings)
    with engine.begin() as conn:
        collection_id = conn.execute(
            insert(CollectionRow).returning(CollectionRow.id),
            {
                "name": "bench",
                "description": "",
                "embedding_model": "m",
                "embedding_dimension": 384,
                "chunk_size": 400,
                "chunk_overlap": 50,
                "created_at": utcnow(),
                "vector_collection": "bench-00000000",
            },
        ).scalar_one()
    spec = ChunkingSpec(400, 50)
    prepared = [prepare_document(d, spec, settings, "d") for d in docs]
    now = utcnow()
    batches = [prepared[start : start + BATCH] for start in range(0, len(prepared), BATCH)]
    started = time.perf_counter()
    for part in batches:
        with engine.begin() as conn:
            pks = dict(
                conn.execute(
                    insert(DocumentRow).returning(DocumentRow.external_id, DocumentRow.id),
                    [
                        {
                            "collection_id": collection_id,
                            "external_id": p.id,
                            "text": p.text,
                            "content_hash": p.content_hash,
                            "metadata_hash": p.metadata_hash,
                            "generation": 1,
                            "incarnation": 1,
                            "state": IndexState.PENDING,
                            "error": None,
                            "chunk_count": len(p.chunks),
                            "created_at": now,
                            "updated_at": now,
                        }
                        for p in part
                    ],
                ).all()
            )
            conn.execute(
                insert(ChunkRow),
                [
                    {
                        "document_id": pks[p.id],
                        "ordinal": c.ordinal,
                        "text": c.text,
                        "start_offset": c.start,
                        "end_offset": c.end,
                        "state": IndexState.PENDING,
                        "error": None,
                        "attempts": 0,
                        "updated_at": now,
                    }
                    for p in part
                    for c in p.chunks
                ],
            )
            conn.execute(
                insert(MetadataRow),
                [metadata_row(pks[p.id], k, v) for p in part for k, v in p.metadata.items()],
            )
    elapsed = time.perf_counter() - started
    engine.dispose()
    return len(docs) / elapsed


def _writer(
    address: str, requests: list[bytes], workers: list[int], sync: tuple[Any, Any, Any]
) -> None:
    """One writer process: one channel, its share of the batches; it starts
    writing when every writer is connected (process start-up is not part of
    the measure).

    Its channel is served by the worker process `workers[0]` tells it, of the
    pids in `workers`: SO_REUSEPORT places each connection on a worker by a
    hash, so 4 connections land 2:2 on two workers only 3 times in 8 (3:1 or
    4:0 otherwise), and the figure would measure that draw instead of the
    service. Many clients spread evenly; 4 placed ones stand for them."""
    ready, go, out = sync
    locked = failed = 0
    channel = _channel_to_worker(address, workers)
    try:
        # The requests go out as the bytes they were serialised to before the
        # clock started: the load generator shares the cores with the
        # service, so it should spend as little of them as it can.
        upsert = channel.unary_unary(
            "/askmojo.metadata.v1.MetadataService/UpsertDocuments",
            request_serializer=None,
            response_deserializer=pb.UpsertDocumentsResponse.FromString,
        )
        ready.put(True)
        go.wait()
        for raw in requests:
            try:
                response = upsert(raw, timeout=120)
            except grpc.RpcError as exc:
                failed += 1
                locked += "locked" in (exc.details() or "")
                continue
            for result in response.results:
                if result.status.code:
                    failed += 1
                    locked += "locked" in result.status.message
    finally:
        channel.close()
    out.put((locked, failed))


def _channel_to_worker(address: str, workers: list[int]) -> grpc.Channel:
    """A channel whose connection the worker process `workers[0]` serves
    (GetStats names it), when `workers` lists every worker's pid."""
    for _ in range(64):
        # A local subchannel pool gives each channel a connection of its own.
        channel = grpc.insecure_channel(address, [("grpc.use_local_subchannel_pool", 1)])
        grpc.channel_ready_future(channel).result(timeout=30)
        stats = pb_grpc.MetadataServiceStub(channel).GetStats(pb.GetStatsRequest(), timeout=30)
        if len(workers) < SERVICE_WORKERS or stats.worker_pid == workers[0]:
            return channel
        channel.close()
    raise RuntimeError(f"no connection to worker {workers[0]} in 64 attempts")


def _worker_pids(address: str) -> list[int]:
    """The pids of the service's worker processes, as GetStats reports them."""
    pids: set[int] = set()
    for _ in range(64):
        if len(pids) == SERVICE_WORKERS:
            break
        with grpc.insecure_channel(address, [("grpc.use_local_subchannel_pool", 1)]) as channel:
            stub = pb_grpc.MetadataServiceStub(channel)
            pids.add(stub.GetStats(pb.GetStatsRequest(), timeout=30).worker_pid)
    return sorted(pids)


@dataclasses.dataclass(frozen=True)
class WriterRun:
    documents_per_s: float
    locked: int
    failed: int
    memory: dict[str, float]
    writes_per_commit: float  # group commit: UpsertDocuments calls per transaction


def grpc_writers(ctx: Context, docs: list[DocumentInput]) -> WriterRun:
    service: ServiceProcess = ctx.metadata_service(
        "metadata-write",
        ctx.dir("metadata-write") / "metadata.db",
        ENVIRONMENT="production",
        # On 127.0.0.1 for this run only: production refuses to start
        # without a key otherwise.
        ALLOW_UNAUTHENTICATED="true",
        WORKERS=str(SERVICE_WORKERS),
        VECTOR_SERVICE_ADDRESS="",
    )
    requests = [
        pb.UpsertDocumentsRequest(
            collection="bench",
            documents=[
                pb.Document(id=d.id, text=d.text, metadata=metadata_to_proto(d.metadata))  # type: ignore[arg-type]
                for d in docs[start : start + BATCH]
            ],
        ).SerializeToString()
        for start in range(0, len(docs), BATCH)
    ]
    with service, grpc.insecure_channel(service.address) as channel:
        pb_grpc.MetadataServiceStub(channel).CreateCollection(
            pb.CreateCollectionRequest(name="bench")
        )
        context = multiprocessing.get_context("spawn")
        ready, go, out = context.Queue(), context.Event(), context.Queue()
        pids = _worker_pids(service.address)
        writers = [
            context.Process(
                target=_writer,
                args=(
                    service.address,
                    requests[i::WRITERS],
                    pids[i % len(pids) :] + pids[: i % len(pids)],
                    (ready, go, out),
                ),
            )
            for i in range(WRITERS)
        ]
        for writer in writers:
            writer.start()
        for _ in writers:
            ready.get(timeout=120)
        started = time.perf_counter()
        go.set()
        counts = [out.get(timeout=600) for _ in writers]
        elapsed = time.perf_counter() - started
        for writer in writers:
            writer.join(30)
        memory = service.rss_mib()
        transactions = writes = 0
        for i in range(len(pids)):
            with _channel_to_worker(service.address, pids[i:] + pids[:i]) as worker:
                stub = pb_grpc.MetadataServiceStub(worker)
                database = stub.GetStats(pb.GetStatsRequest()).database
                transactions += database.write_transactions
                writes += database.writes
    return WriterRun(
        len(docs) / elapsed,
        locked=sum(c[0] for c in counts),
        failed=sum(c[1] for c in counts),
        memory=memory,
        writes_per_commit=round(writes / transactions, 2) if transactions else 0.0,
    )


def run(ctx: Context) -> None:
    docs = documents(ctx.sizes.metadata_docs)
    pairs: list[tuple[WriterRun, float]] = []
    for _ in range(ctx.sizes.metadata_repeat):
        core = sqlalchemy_core(ctx.dir("core") / "core.db", docs)
        pairs.append((grpc_writers(ctx, docs), core))
    rate, core = median_pair([(served.documents_per_s, core) for served, core in pairs])
    median = next(served for served, _ in pairs if served.documents_per_s == rate)
    ctx.ratio(
        Ratio(
            "metadata_write_ratio",
            rate,
            f"UpsertDocuments, WORKERS={SERVICE_WORKERS}, "
            f"{WRITERS} writer processes, batches of {BATCH}",
            core,
            "SQLAlchemy Core executemany, one transaction per batch",
            "documents/s",
            0.50,
        )
    )
    ctx.measure(
        "writer_contention",
        {
            "writer_processes": WRITERS,
            "documents_per_s": round(rate, 1),
            "database_is_locked_errors": sum(served.locked for served, _ in pairs),
            "failed_documents": sum(served.failed for served, _ in pairs),
            "writes_per_commit": median.writes_per_commit,
        },
    )
    ctx.measure("memory_mib_metadata_production", median.memory)
