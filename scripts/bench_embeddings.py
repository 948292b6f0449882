"""Embedding throughput: the vector service vs. in-process
`SentenceTransformer.encode`, measured side by side in one run.

    .venv/bin/python scripts/bench_embeddings.py [--texts 2048] [--repeat 3]

* denominator: `encode` in this process, torch threads = the service's whole
  budget (MAX_WORKERS x threads per worker), best of batch sizes 32/64/128.
* numerators: a real `python -m vector_service` (defaults for this machine),
  fed by this process over gRPC: `EmbedStream` in batches of 64, and 16
  concurrent callers sending one text per `Embed` call.
Fixed seeded corpus of short texts (5-15 words); warm-up excluded; median of
`--repeat` runs; each ratio printed with its numerator and denominator.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator

import grpc
from bench_common import median_rate, sentences

from askmojo.vector.v1 import embedding_service_pb2 as epb
from askmojo.vector.v1 import embedding_service_pb2_grpc as epb_grpc
from vector_service.config import VectorSettings, packaged_model_path


def corpus(count: int) -> list[str]:
    return sentences(count, 5, 15, seed=11)


def bench_in_process(texts: list[str], threads: int, repeat: int) -> tuple[float, int]:
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(packaged_model_path(), device="cpu")
    best = (0.0, 0)
    for batch_size in (32, 64, 128):
        rate = median_rate(
            lambda b=batch_size: model.encode(texts, batch_size=b, normalize_embeddings=True),
            len(texts),
            repeat,
        )
        print(f"  encode batch_size={batch_size}: {rate:.0f} texts/s")
        best = max(best, (rate, batch_size))
    return best


def start_service(persist: str) -> tuple[subprocess.Popen[str], int]:
    env = {
        **os.environ,
        "CHROMADB_PERSIST_DIRECTORY": persist,
        "VECTOR_PORT": "0",
        "VECTOR_HOST": "127.0.0.1",
        "LOG_FORMAT": "json",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "vector_service"], env=env, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("{") and json.loads(line)["message"] == "vector service listening":
            port = int(json.loads(line)["port"])
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
            return proc, port
    raise RuntimeError("vector service did not start")


def bench_stream(stub: epb_grpc.EmbeddingServiceStub, texts: list[str], repeat: int) -> float:
    def requests() -> Iterator[epb.EmbedStreamRequest]:
        for start in range(0, len(texts), 64):
            yield epb.EmbedStreamRequest(texts=texts[start : start + 64], batch_id=str(start))

    def run() -> None:
        for response in stub.EmbedStream(requests(), timeout=600):
            assert response.status.code == 0, response.status.message

    return median_rate(run, len(texts), repeat)


def bench_concurrent(
    stub: epb_grpc.EmbeddingServiceStub, texts: list[str], repeat: int, callers: int = 16
) -> float:
    def run() -> None:
        def caller(index: int) -> None:
            for text in texts[index::callers]:
                stub.Embed(epb.EmbedRequest(texts=[text]), timeout=60)

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    return median_rate(run, len(texts), repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--texts", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    texts = corpus(args.texts)
    settings = VectorSettings(_env_file=None)
    budget = settings.max_workers * settings.threads_per_worker
    print(
        f"{os.cpu_count()} CPUs; service: {settings.max_workers} worker(s) x "
        f"{settings.threads_per_worker} torch threads; baseline: {budget} torch threads"
    )
    baseline, batch_size = bench_in_process(texts, budget, args.repeat)
    with tempfile.TemporaryDirectory() as persist:
        proc, port = start_service(persist)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = epb_grpc.EmbeddingServiceStub(channel)
                stream = bench_stream(stub, texts, args.repeat)
                concurrent = bench_concurrent(stub, texts, args.repeat)
        finally:
            proc.terminate()
            proc.wait(60)
    print(f"\n{args.texts} short texts, median of {args.repeat}")
    print("| measure | texts/s | ratio |")
    print("| --- | --- | --- |")
    print(f"| in-process encode, batch_size={batch_size} (denominator) | {baseline:.0f} | 1.00 |")
    print(f"| EmbedStream, batches of 64 | {stream:.0f} | {stream / baseline:.2f} |")
    print(
        f"| 16 concurrent Embed callers, 1 text each | {concurrent:.0f} | "
        f"{concurrent / baseline:.2f} |"
    )


if __name__ == "__main__":
    main()
