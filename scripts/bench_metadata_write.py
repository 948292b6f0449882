"""Metadata write throughput: `UpsertDocuments` over gRPC vs. the same rows
written through SQLAlchemy directly, measured side by side in one run.

    .venv/bin/python scripts/bench_metadata_write.py [--docs 20000] [--batch 100]

* denominator: SQLAlchemy Core executemany of the exact rows the service
  writes (documents, typed metadata, chunks), prepared before the clock starts,
  one transaction per batch, on the same engine settings (WAL, pragmas).
* numerator: a real `python -m metadata_service` process (WORKERS=1 and 2)
  fed by a client in another process, `--concurrency` calls in flight; the
  service validates, hashes and chunks inside the timed section.
Each side runs `--repeat` times on a fresh database; the median is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from bench_common import sentences
from sqlalchemy import insert

from askmojo.common.filters import metadata_to_proto
from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from metadata_service.config import MetadataSettings
from metadata_service.db.engine import build_engine
from metadata_service.db.models import (
    ChunkRow,
    CollectionRow,
    DocumentRow,
    IndexState,
    MetadataRow,
    utcnow,
)
from metadata_service.db.repository import metadata_row
from metadata_service.domain import ChunkingSpec, DocumentInput
from metadata_service.server import prepare_database
from metadata_service.validation import prepare_document


def corpus(count: int, seed: int = 7) -> list[DocumentInput]:
    rng = random.Random(seed)
    docs = []
    for i, words in enumerate(sentences(count, 40, 120, seed)):
        text = words + "."
        metadata = {"source": f"site-{i % 17}", "year": 1990 + i % 35, "score": rng.random()}
        docs.append(DocumentInput(f"doc-{i:07d}", text, metadata))
    return docs


def bench_sqlalchemy(db_path: Path, docs: list[DocumentInput], batch: int) -> float:
    settings = MetadataSettings(_env_file=None, database_url=f"sqlite:///{db_path}")
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
                "chunk_size": 800,
                "chunk_overlap": 100,
                "created_at": utcnow(),
            },
        ).scalar_one()
    spec = ChunkingSpec(800, 100)
    prepared = [prepare_document(d, spec, settings, "d") for d in docs]
    now = utcnow()
    batches: list[tuple[list[dict[str, Any]], list[Any]]] = []
    for start in range(0, len(prepared), batch):
        part = prepared[start : start + batch]
        rows = [
            {
                "collection_id": collection_id,
                "external_id": p.id,
                "text": p.text,
                "content_hash": p.content_hash,
                "metadata_hash": p.metadata_hash,
                "generation": 1,
                "state": IndexState.PENDING,
                "error": None,
                "chunk_count": len(p.chunks),
                "created_at": now,
                "updated_at": now,
            }
            for p in part
        ]
        batches.append((rows, part))
    started = time.perf_counter()
    for rows, part in batches:
        with engine.begin() as conn:
            result = conn.execute(
                insert(DocumentRow).returning(
                    DocumentRow.external_id, DocumentRow.id, sort_by_parameter_order=True
                ),
                rows,
            )
            pks = dict(result.all())
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


def bench_grpc(
    db_path: Path, docs: list[DocumentInput], batch: int, workers: int, concurrency: int
) -> float:
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{db_path}",
        "METADATA_PORT": "0",
        "METADATA_HOST": "127.0.0.1",
        "ENVIRONMENT": "production",
        "WORKERS": str(workers),
        "LOG_FORMAT": "json",
        # The database write path alone; indexing is measured with the pair.
        "VECTOR_SERVICE_ADDRESS": "",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "metadata_service"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        port = 0
        for line in proc.stderr:
            entry = json.loads(line)
            if entry["message"] == "metadata service listening":
                port = int(entry["port"])
                break
        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
        requests = [
            pb.UpsertDocumentsRequest(
                collection="bench",
                documents=[
                    pb.Document(
                        id=d.id,
                        text=d.text,
                        metadata=metadata_to_proto(d.metadata),  # type: ignore[arg-type]
                    )
                    for d in docs[start : start + batch]
                ],
            )
            for start in range(0, len(docs), batch)
        ]
        # One channel per in-flight caller, so SO_REUSEPORT can spread them.
        channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for _ in range(concurrency)]
        for channel in channels:
            grpc.channel_ready_future(channel).result(timeout=30)
        stubs = [pb_grpc.MetadataServiceStub(c) for c in channels]
        _wait_serving(stubs[0])
        stubs[0].CreateCollection(pb.CreateCollectionRequest(name="bench"))
        pending = list(enumerate(requests))
        lock = threading.Lock()
        failures: list[str] = []

        def caller(stub: pb_grpc.MetadataServiceStub) -> None:
            while True:
                with lock:
                    if not pending:
                        return
                    _, request = pending.pop()
                response = stub.UpsertDocuments(request, timeout=120)
                failures.extend(r.status.message for r in response.results if r.status.code)

        started = time.perf_counter()
        threads = [threading.Thread(target=caller, args=(s,)) for s in stubs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        if failures:
            raise RuntimeError(f"{len(failures)} documents failed: {failures[:3]}")
        for channel in channels:
            channel.close()
        return len(docs) / elapsed
    finally:
        proc.terminate()
        proc.wait(30)


def _wait_serving(stub: pb_grpc.MetadataServiceStub) -> None:
    for _ in range(100):
        try:
            stub.ListCollections(pb.ListCollectionsRequest(), timeout=2)
            return
        except grpc.RpcError:
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    docs = corpus(args.docs)
    results: dict[str, list[float]] = {"sqlalchemy": [], "grpc_1_worker": [], "grpc_2_workers": []}
    for run in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            results["sqlalchemy"].append(bench_sqlalchemy(Path(tmp) / "a.db", docs, args.batch))
            results["grpc_1_worker"].append(
                bench_grpc(Path(tmp) / "b.db", docs, args.batch, 1, args.concurrency)
            )
            results["grpc_2_workers"].append(
                bench_grpc(Path(tmp) / "c.db", docs, args.batch, 2, args.concurrency)
            )
        print(f"run {run + 1}: " + ", ".join(f"{k}={v[-1]:.0f} rows/s" for k, v in results.items()))
    median = {k: statistics.median(v) for k, v in results.items()}
    base = median["sqlalchemy"]
    print(
        f"\n{args.docs} documents, batches of {args.batch}, {args.concurrency} calls in flight, "
        f"{os.cpu_count()} CPUs, median of {args.repeat}"
    )
    print("| path | documents/s | ratio to SQLAlchemy |")
    print("| --- | --- | --- |")
    for key, value in median.items():
        print(f"| {key} | {value:.0f} | {value / base:.2f} |")


if __name__ == "__main__":
    main()
