"""PostgreSQL keyword search at scale (issue #14): times `keyword_index.search`
on a collection of ~40,000 chunks of real text (the docstrings and comments
of the installed Python packages, which nobody here wrote), for queries of
common words (which match most chunks) and rare ones, and prints the query
plan of the slowest.

    .venv/bin/python -m evals.pg_keyword_bench \\
        --admin-url postgresql+psycopg://postgres@127.0.0.1:5432/test

Creates its own database (`--database`, dropped at the end unless --keep)
and writes through the service's own Catalog (real migrations, real
chunking, real generated tsvector column and GIN index).
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from sqlalchemy import create_engine, make_url, text

from metadata_service.catalog import Catalog
from metadata_service.config import MetadataSettings
from metadata_service.db import keyword_index
from metadata_service.db.engine import Database
from metadata_service.domain import CollectionSpec, DocumentInput
from metadata_service.server import prepare_database

search = keyword_index.search

QUERIES = [
    # Common words: each matches a large share of the chunks.
    "return the value",
    "data file",
    "function returns a list of objects",
    "how do I use this with a file or a string?",
    "what happens when the connection is closed?",
    # Rare words: few matches.
    "idempotent",
    "levenshtein distance",
]
CHUNK_SIZE = 500
CHUNK_OVERLAP = 50
DOCUMENT_CHARS = 5000


def documents(root: Path, wanted_chunks: int) -> Iterator[DocumentInput]:
    """Documents of ~DOCUMENT_CHARS characters of the comments and
    docstrings of `root`'s .py files, in path order, until about
    `wanted_chunks` chunks of CHUNK_SIZE are made."""
    words = re.compile(r"[A-Za-z]{3,}")
    buffer: list[str] = []
    size = 0
    made = 0
    n = 0
    for path in sorted(root.rglob("*.py")):
        try:
            source = path.read_text(errors="replace")
        except OSError:
            continue
        for raw in source.splitlines():
            line = raw.strip().lstrip("#").strip().strip('"').strip()
            if len(words.findall(line)) < 4:
                continue
            buffer.append(line)
            size += len(line) + 1
            if size >= DOCUMENT_CHARS:
                n += 1
                yield DocumentInput(f"doc{n:06d}", "\n".join(buffer), {"n": n})
                made += DOCUMENT_CHARS // (CHUNK_SIZE - CHUNK_OVERLAP)
                buffer, size = [], 0
                if made >= wanted_chunks:
                    return


def timed(database: Database, cid: int, query: str, runs: int) -> tuple[float, int]:
    """Median seconds of `runs` searches (top 30, as HYBRID at top_k 10
    fetches), and the hits."""
    times = []
    hits = 0
    for _ in range(runs):
        with database.session_scope() as session:
            started = time.perf_counter()
            hits = len(search(session, cid, query, None, 30))
            times.append(time.perf_counter() - started)
    return statistics.median(times), hits


def _filled(database: Database, catalog: Catalog, wanted: int) -> int:
    """The id of the collection 'bench', written first if it is not there."""
    with database.session_scope() as session:
        cid = session.execute(text("SELECT id FROM collections WHERE name = 'bench'")).scalar()
    if cid is not None:
        return int(cid)
    catalog.create_collection(
        CollectionSpec(name="bench", chunk_size=CHUNK_SIZE, chunk_overlap=CHUNK_OVERLAP)
    )
    started = time.perf_counter()
    batch: list[DocumentInput] = []
    for document in documents(Path(sys.prefix) / "lib", wanted):
        batch.append(document)
        if len(batch) == 500:
            catalog.upsert_documents("bench", batch)
            batch = []
    if batch:
        catalog.upsert_documents("bench", batch)
    print(f"written in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    with database.session_scope() as session:
        session.execute(text("ANALYZE"))
        return int(
            session.execute(text("SELECT id FROM collections WHERE name = 'bench'")).scalar_one()
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--database", default="askmojo_kw_bench")
    parser.add_argument("--chunks", type=int, default=40_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep (and reuse) the database")
    parser.add_argument(
        "--implementation",
        type=Path,
        help="time this file's search() instead (a former keyword_index.py, for before/after)",
    )
    args = parser.parse_args(argv)
    if args.implementation is not None:
        spec = importlib.util.spec_from_file_location("former_keyword_index", args.implementation)
        assert spec is not None and spec.loader is not None
        former = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = former  # dataclasses look their module up
        spec.loader.exec_module(former)
        global search  # noqa: PLW0603
        search = former.search
    admin = create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    url = make_url(args.admin_url).set(database=args.database)
    with admin.connect() as conn:
        exists = conn.execute(
            text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": args.database}
        ).first()
        if not exists:
            conn.execute(text(f'CREATE DATABASE "{args.database}"'))
    settings = MetadataSettings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=url.render_as_string(hide_password=False),
        vector_service_address="",
    )
    prepare_database(settings)
    database = Database.from_settings(settings)
    try:
        cid = _filled(database, Catalog(database, settings), args.chunks)
        with database.session_scope() as session:
            chunks = session.execute(text("SELECT count(*) FROM chunks")).scalar_one()
        print(f"{chunks} chunks; median of {args.runs} searches (limit 30)\n")
        print("| query | terms | matching chunks | hits | seconds |")
        print("| --- | --- | --- | --- | --- |")
        for query in QUERIES:
            terms = keyword_index.query_terms(query)
            with database.session_scope() as session:
                matching = session.execute(
                    text(
                        "SELECT count(*) FROM chunks WHERE text_search @@ "
                        "to_tsquery('english'::regconfig, :q)"
                    ),
                    {"q": keyword_index.tsquery_text(terms)},
                ).scalar_one()
            seconds, hits = timed(database, cid, query, args.runs)
            print(f"| {query} | {' '.join(terms)} | {matching} | {hits} | {seconds:.3f} |")
    finally:
        database.dispose()
        if not args.keep:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)'))
        admin.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
