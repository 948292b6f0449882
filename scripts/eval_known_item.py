"""Known-item search against running services (issue #4).

Ingests Python standard library module documentation into a fresh collection,
queries with one sentence taken from each document, and prints hit@1/hit@5 of
the service beside exact brute-force cosine search over the same chunk vectors.

    make run   # in another terminal
    .venv/bin/python scripts/eval_known_item.py --modules 200

The evaluation itself lives in evals/known_item.py (the slow test runs it too).
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
        "--no-filter",
        action="store_true",
        help="skip the second pass of searches with a filter every document matches",
    )
    parser.add_argument(
        "--misses", action="store_true", help="diagnose the queries the service missed"
    )
    args = parser.parse_args(argv)

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


if __name__ == "__main__":
    sys.exit(main())
