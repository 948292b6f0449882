"""A collection deleted while another worker or replica writes documents
into it, on PostgreSQL (found by tests/pipeline/test_pg_replicas.py).

Under READ COMMITTED, DeleteCollection could commit between an ingest's
look-up of the collection and its insert of the documents: the insert then
failed on the documents' foreign key and the whole ingest stream ended with
INTERNAL. Now the write holds the collection row FOR KEY SHARE: the delete
waits for it, and its cascade takes the new documents too.

The moment is made, not hoped for: the write is paused right after its
look-up (inside its transaction) until the delete has either committed or
is seen waiting for a lock in pg_stat_activity. Skipped, with the reason,
when PostgreSQL is unreachable."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from metadata_service.catalog import Catalog
from metadata_service.config import MetadataSettings
from metadata_service.db import document_queries
from metadata_service.db.engine import Database
from metadata_service.domain import CollectionSpec, DocumentInput
from metadata_service.errors import NotFound
from tests.conftest import postgres_lock_waiters
from tests.waiting import wait_until

pytestmark = pytest.mark.postgres


def test_a_collection_deleted_during_a_write_into_it(
    pg_settings: MetadataSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer_db = Database.from_settings(pg_settings)
    deleter_db = Database.from_settings(pg_settings)
    writer = Catalog(writer_db, pg_settings)
    deleter = Catalog(deleter_db, pg_settings)
    writer.create_collection(CollectionSpec(name="docs"))
    deleted: list[Any] = []
    errors: list[BaseException] = []

    def delete() -> None:
        try:
            deleted.append(deleter.delete_collection("docs"))
        except BaseException as exc:
            errors.append(exc)

    deleting = threading.Thread(target=delete)
    real_find = document_queries.find_documents

    def find_then_delete(session: Any, *args: Any, **kwargs: Any) -> Any:
        # Inside the write transaction, after it looked the collection up:
        # the delete runs now, to its commit or until it waits for us.
        if kwargs.get("lock") and not deleting.is_alive() and not deleted:
            deleting.start()
            wait_until(
                lambda: deleted or errors or postgres_lock_waiters(pg_settings.database_url),
                20,
                "the delete committed or waiting for the write",
            )
        return real_find(session, *args, **kwargs)

    monkeypatch.setattr(document_queries, "find_documents", find_then_delete)
    try:
        outcomes = writer.upsert_documents(
            "docs", [DocumentInput(f"d{i}", f"Text number {i}.", {}) for i in range(3)]
        )
        deleting.join(20)
        assert not errors, errors
        assert [o.state.name for o in outcomes] == ["PENDING"] * 3
        # The delete went after the write, and took its documents along.
        assert deleted[0].deleted_documents == 3
        engine = create_engine(pg_settings.database_url)
        try:
            with engine.connect() as conn:
                left = conn.execute(text("SELECT count(*) FROM documents")).scalar_one()
        finally:
            engine.dispose()
        assert left == 0
    finally:
        writer_db.dispose()
        deleter_db.dispose()


def test_two_deletes_of_one_collection_at_once(
    pg_settings: MetadataSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through two replicas at once, both waiting for a write into it: one
    deletes it (and counts the write's documents), the other is NOT_FOUND,
    instead of both answering that they deleted it."""
    databases = [Database.from_settings(pg_settings) for _ in range(3)]
    writer, *deleters = (Catalog(db, pg_settings) for db in databases)
    writer.create_collection(CollectionSpec(name="docs"))
    results: list[Any] = []

    def delete(catalog: Catalog) -> None:
        try:
            results.append(catalog.delete_collection("docs").deleted_documents)
        except NotFound as exc:
            results.append(exc)

    threads = [threading.Thread(target=delete, args=(c,)) for c in deleters]
    real_find = document_queries.find_documents

    def find_then_delete(session: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("lock") and not threads[0].is_alive() and not results:
            for thread in threads:
                thread.start()
            wait_until(
                lambda: len(results) + postgres_lock_waiters(pg_settings.database_url) >= 2,
                20,
                "both deletes waiting for the write (or done)",
            )
        return real_find(session, *args, **kwargs)

    monkeypatch.setattr(document_queries, "find_documents", find_then_delete)
    try:
        writer.upsert_documents(
            "docs", [DocumentInput(f"d{i}", f"Text {i}.", {}) for i in range(3)]
        )
        for thread in threads:
            thread.join(20)
        counts = sorted(r for r in results if isinstance(r, int))
        missing = [r for r in results if isinstance(r, NotFound)]
        assert (counts, len(missing)) == ([3], 1), results
    finally:
        for db in databases:
            db.dispose()
