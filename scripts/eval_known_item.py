"""Known-item search against running services (issue #4).

Ingests Python standard library module documentation into a fresh collection,
queries with one sentence taken from each document, and prints hit@1/hit@5 of
the service beside exact brute-force cosine search over the same chunk vectors.

    make run   # in another terminal
    .venv/bin/python scripts/eval_known_item.py --modules 200

The evaluation itself lives in evals/known_item.py (the slow test runs it too).

With --offline (issue #14), no services: two corpora (stdlib docs, installed
distributions' READMEs), each with sentence and independent (summary) queries,
chunked by each --chunking given, scored by exact dense, FTS5 bm25 and their
reciprocal-rank fusion (evals/hybrid.py):

    .venv/bin/python scripts/eval_known_item.py --offline --modules 150 \
        --chunking tokens:128:16 --chunking characters:400:50
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from askmojo.vector.v1 import embedding_service_pb2_grpc as epb_grpc
from evals import known_item


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--metadata", default="localhost:50051", help="metadata service address")
    parser.add_argument("--vector", default="localhost:50052", help="vector service address")
    parser.add_argument("--collection", default="known-items")
    parser.add_argument(
        "--replace", action="store_true", help="delete the collection first if it exists"
    )
    parser.add_argument(
        "--modules", type=int, default=None, help="documents (seeded sample; default: all)"
    )
    parser.add_argument("--max-chars", type=int, default=known_item.MAX_CHARS)
    parser.add_argument("--seed", type=int, default=known_item.SEED)
    parser.add_argument("--top-k", type=int, default=50, help="chunks per Search")
    parser.add_argument("--chunk-size", type=int, default=0, help="0: the service's default")
    parser.add_argument("--chunk-overlap", type=int, default=0)
    parser.add_argument(
        "--chunk-unit",
        choices=["default", "characters", "tokens"],
        default="default",
        help="unit of --chunk-size/--chunk-overlap (default: the service's)",
    )
    parser.add_argument(
        "--offline", action="store_true", help="the offline chunking/mode evaluation"
    )
    parser.add_argument(
        "--chunking",
        action="append",
        default=[],
        help="with --offline: UNIT:SIZE:OVERLAP (characters, tokens, tokens-flat); repeatable",
    )
    parser.add_argument(
        "--no-filter",
        action="store_true",
        help="skip the second pass of searches with a filter every document matches",
    )
    parser.add_argument(
        "--misses", action="store_true", help="diagnose the queries the service missed"
    )
    args = parser.parse_args(argv)
    if args.offline:
        return offline(args.modules, args.max_chars, args.chunking or ["tokens:128:16"])
    unit = {
        "default": pb.CHUNK_UNIT_UNSPECIFIED,
        "characters": pb.CHUNK_UNIT_CHARACTERS,
        "tokens": pb.CHUNK_UNIT_TOKENS,
    }[args.chunk_unit]

    documents, items = known_item.corpus(args.modules, args.max_chars, seed=args.seed)
    if args.modules is not None and len(documents) < args.modules:
        print(f"only {len(documents)} documents have a known item", file=sys.stderr)
    with (
        grpc.insecure_channel(args.metadata) as metadata_channel,
        grpc.insecure_channel(args.vector) as vector_channel,
    ):
        stub = pb_grpc.MetadataServiceStub(metadata_channel)
        if args.replace:
            try:
                stub.DeleteCollection(pb.DeleteCollectionRequest(name=args.collection), timeout=120)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
        try:
            report = known_item.evaluate(
                stub,
                vector_channel,
                args.collection,
                documents,
                items,
                top_k=args.top_k,
                chunk_size=args.chunk_size,
                chunk_overlap=args.chunk_overlap,
                chunk_unit=unit,
                filtered=not args.no_filter,
            )
        except grpc.RpcError as exc:
            print(f"eval_known_item: {exc.code().name}: {exc.details()}", file=sys.stderr)
            if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                print("(pass --replace to start from a fresh collection)", file=sys.stderr)
            return 1
        print(report.markdown())
        if args.misses:
            embedder = epb_grpc.EmbeddingServiceStub(vector_channel)
            print()
            print(known_item.diagnose(report, documents, embedder))
    return 0


def offline(documents: int | None, max_chars: int, chunkings: list[str]) -> int:
    from evals import hybrid
    from metadata_service.tokenizer import PACKAGED_MODEL, tokenizer_for

    tokenizer = tokenizer_for(PACKAGED_MODEL)
    assert tokenizer is not None
    encode = hybrid.sentence_transformer_encoder()
    configs = []
    for spec in chunkings:
        unit, size, overlap = spec.split(":")
        configs.append(hybrid.Chunking(unit, int(size), int(overlap)))
    print(
        "| query set | chunking | chunks | DENSE (exact) hit@1 / hit@5 / MRR "
        "| KEYWORD (FTS5) | HYBRID (RRF 60) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for query_set in hybrid.stdlib_sets(documents, max_chars) + hybrid.package_sets(
        documents, max_chars
    ):
        name = f"{query_set.name} ({len(query_set.documents)} docs, {len(query_set.items)} q)"
        for config in configs:
            scores = hybrid.evaluate(query_set, config, tokenizer, encode)
            cells = [scores[m].row().replace(" | ", " / ") for m in ("DENSE", "KEYWORD", "HYBRID")]
            print(
                f"| {name} | {config} | {int(scores['chunks'].hit1)} | " + " | ".join(cells) + " |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
