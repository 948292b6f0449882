"""The int8 backend against the float32 torch model, in this process.

On the known-item corpus (stdlib module documentation, chunked as the
service does): recall@10 — how many of the float32 model's 10 nearest chunks
the int8 model also ranks in its 10, per query — and known-item hit@5 of
both; then texts/s of both on short texts, as the service runs them
(interactive: batches of 8, one thread; bulk: batches of 128, all threads).

    .venv/bin/python scripts/eval_onnx_int8.py [--modules 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.corpora import short_texts
from evals import known_item
from metadata_service.chunking import chunk_text
from vector_service.config import packaged_model_path
from vector_service.embedding import onnx_int8, worker

Encode = Callable[[list[str], int], np.ndarray]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", type=int, default=200, help="corpus documents")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch

    model = worker.load_model(packaged_model_path())
    with tempfile.TemporaryDirectory() as cache:
        onnx_file = onnx_int8.cached_export(model, packaged_model_path(), Path(cache))
        encoder = onnx_int8.OnnxInt8Encoder(onnx_file, args.threads)

        def float32(texts: list[str], threads: int) -> np.ndarray:
            torch.set_num_threads(threads)
            return np.asarray(model.encode(texts, batch_size=len(texts), normalize_embeddings=True))

        def int8(texts: list[str], threads: int) -> np.ndarray:
            return encoder.encode(model.tokenize(texts), threads)

        documents, items = known_item.corpus(modules=args.modules)
        chunks = [(d.id, c.text) for d in documents for c in chunk_text(d.text, 400, 50)]
        queries = [item.query for item in items]
        nearest = {
            name: _nearest(encode, [t for _, t in chunks], queries, args.threads)
            for name, encode in (("float32", float32), ("int8", int8))
        }
        recall = np.mean(
            [
                len(set(a) & set(b)) / 10
                for a, b in zip(nearest["float32"], nearest["int8"], strict=True)
            ]
        )
        print(f"{len(documents)} documents, {len(chunks)} chunks, {len(queries)} queries")
        print(f"recall@10 of int8 against float32: {recall:.3f}")
        for name, tops in nearest.items():
            print(f"known-item hit@5, {name}: {_hit_at_5(tops, chunks, items):.3f}")
        texts = short_texts(1024, seed=5)
        for batch, threads in ((8, 1), (128, args.threads)):
            rates = {
                name: _rate(encode, texts, batch, threads)
                for name, encode in (("float32", float32), ("int8", int8))
            }
            print(
                f"batches of {batch}, {threads} thread(s): float32 {rates['float32']:.0f} "
                f"texts/s, int8 {rates['int8']:.0f} ({rates['int8'] / rates['float32']:.2f}x)"
            )
    return 0


def _nearest(encode: Encode, chunks: list[str], queries: list[str], threads: int) -> np.ndarray:
    stored = np.vstack([encode(chunks[i : i + 64], threads) for i in range(0, len(chunks), 64)])
    asked = np.vstack([encode(queries[i : i + 64], threads) for i in range(0, len(queries), 64)])
    return np.argsort(-(asked @ stored.T), axis=1)[:, :10]


def _hit_at_5(
    tops: np.ndarray, chunks: list[tuple[str, str]], items: list[known_item.KnownItem]
) -> float:
    hits = 0
    for top, item in zip(tops, items, strict=True):
        documents = list(dict.fromkeys(chunks[j][0] for j in top))
        hits += item.document_id in documents[:5]
    return hits / len(items)


def _rate(encode: Encode, texts: list[str], batch: int, threads: int) -> float:
    encode(texts[:batch], threads)  # warm-up
    best = 0.0
    for _ in range(3):
        started = time.perf_counter()
        for i in range(0, len(texts), batch):
            encode(texts[i : i + batch], threads)
        best = max(best, len(texts) / (time.perf_counter() - started))
    return best


if __name__ == "__main__":
    sys.exit(main())
