"""No query of a hot path reads a whole table: every statement the service
runs during a representative workload is EXPLAINed on SQLite, and none may
scan chunks, documents or their metadata (the global stats counts aside).

This caught the indexing outbox scanning every chunk once per batch (the
partial index went unused), which slowed ingest down as the table grew."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event

from askmojo.common.filters import Condition, Op
from metadata_service.catalog import Catalog
from metadata_service.config import MetadataSettings
from metadata_service.db.engine import Database
from metadata_service.db.models import utcnow
from metadata_service.domain import CollectionSpec, DocumentInput, DocumentQuery
from metadata_service.outbox import ChunkPlace, Outbox, VectorVersion
from metadata_service.server import prepare_database

BIG_TABLES = ("chunks", "documents", "document_metadata")
# Counts over everything stored: a scan is what they are (the truncated
# chunks' count scans only its partial index, which holds just those).
WHOLE_DATABASE_STATS = (
    "FROM documents GROUP BY documents.state",
    "sum(documents.chunk_count)",
    "FROM chunks WHERE chunks.truncated = 1",
)


@pytest.fixture
def recorded(settings: MetadataSettings) -> Iterator[tuple[Catalog, Database, list[Any]]]:
    prepare_database(settings)
    db = Database.from_settings(settings)
    statements: list[tuple[str, Any]] = []

    @event.listens_for(db.engine, "before_cursor_execute")
    def record(_conn: Any, _cursor: Any, stmt: str, params: Any, _ctx: Any, many: bool) -> None:
        # INSERTs read nothing; the rest is what could scan.
        if stmt.lstrip().startswith(("SELECT", "UPDATE", "DELETE")):
            statements.append((stmt, params[0] if many and params else params))

    yield Catalog(db, settings), db, statements
    db.dispose()


def test_no_hot_path_query_scans_a_big_table(
    recorded: tuple[Catalog, Database, list[Any]], settings: MetadataSettings
) -> None:
    catalog, db, statements = recorded
    catalog.create_collection(CollectionSpec(name="docs"))
    docs = [DocumentInput(f"d{i}", "word " * 300, {"k": i}) for i in range(5)]
    catalog.upsert_documents("docs", docs)
    catalog.upsert_documents("docs", [DocumentInput("d1", "other " * 50, {"k": 1, "j": "x"})])
    outbox = Outbox(db)
    target = outbox.collection("docs")
    lease = utcnow()
    outbox.claim_chunks(lease, 10, target)
    outbox.chunks_held_by_others(target)
    outbox.claimed(lease)
    outbox.claim_chunks(lease, 10)
    outbox.release_lease(lease)
    match = VectorVersion("d1#0", ChunkPlace("d1", 0), 1, "ab")
    outbox.search_candidates(target, [match], None, "other word", 30)
    outbox.search_candidates(target, [match], Condition("k", Op.GT, (1,)), "other", 30)
    outbox.check_vectors(target, [VectorVersion("d1:0", ChunkPlace("d1", 0), 1, "ab")], repair=True)
    outbox.indexed_chunks_after(target, 0, 10)
    outbox.resume_unfinished(target, repair=True)
    outbox.document_states("docs", ["d1"])
    catalog.list_documents(DocumentQuery("docs", filter=Condition("k", Op.EQ, (1,))))
    catalog.get_document("docs", "d1", include_text=True)
    catalog.delete_documents("docs", ["d4"], None)
    catalog.delete_documents("docs", [], Condition("k", Op.EQ, (3,)))
    catalog.stats("docs")
    catalog.stats("")

    explain = sqlite3.connect(settings.database_url.removeprefix("sqlite:///"))
    scans = {}
    for stmt, params in statements:
        if any(marker in " ".join(stmt.split()) for marker in WHOLE_DATABASE_STATS):
            continue
        plan = [row[-1] for row in explain.execute(f"EXPLAIN QUERY PLAN {stmt}", params or ())]
        scanned = [p for p in plan if p.startswith("SCAN") and p.split()[1] in BIG_TABLES]
        if scanned:
            scans[" ".join(stmt.split())[:160]] = scanned
    explain.close()
    assert len(statements) > 30  # the workload ran
    assert scans == {}
