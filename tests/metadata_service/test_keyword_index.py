"""The keyword index's contract, run on a SQLite file and again on
PostgreSQL (skipped with a reason when absent): found by words, ranked,
filtered, kept in the same transaction as the chunks, safe against any
query text, back-filled by its migration."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import datetime

import pytest
from alembic import command
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import text

from askmojo.common.filters import Op
from metadata_service import migrations
from metadata_service.catalog import Catalog
from metadata_service.config import MetadataSettings
from metadata_service.db import keyword_index
from metadata_service.db.engine import Database
from metadata_service.domain import CollectionSpec, DocumentInput
from metadata_service.server import prepare_database
from tests.filter_cases import cond


@pytest.fixture
def database(backend_settings: MetadataSettings) -> Iterator[Database]:
    prepare_database(backend_settings)
    db = Database.from_settings(backend_settings)
    yield db
    db.dispose()


@pytest.fixture
def catalog(database: Database, backend_settings: MetadataSettings) -> Catalog:
    cat = Catalog(database, backend_settings)
    cat.create_collection(CollectionSpec(name="docs", chunk_size=200, chunk_overlap=20))
    cat.create_collection(CollectionSpec(name="other", chunk_size=200, chunk_overlap=20))
    return cat


def doc(doc_id: str, text: str, **metadata: object) -> DocumentInput:
    return DocumentInput(doc_id, text, metadata)  # type: ignore[arg-type]


def collection_id(database: Database, name: str) -> int:
    with database.session_scope() as session:
        return int(
            session.execute(
                text("SELECT id FROM collections WHERE name = :n"), {"n": name}
            ).scalar_one()
        )


def found(
    database: Database,
    query: str,
    *,
    collection: str = "docs",
    where: object = None,
    limit: int = 10,
) -> list[str]:
    cid = collection_id(database, collection)
    with database.session_scope() as session:
        hits = keyword_index.search(session, cid, query, where, limit)  # type: ignore[arg-type]
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits))
    return [h.document_id for h in hits]


CORPUS = [
    doc("kettle", "The kettle boils water for tea in the kitchen.", lang="en", year=2020),
    doc("zebra", "Zebras graze on the savannah; a zebra herd moves at dawn.", lang="en", year=2021),
    doc("ident", "Error code XJ9000-QZ raised by the flux capacitor module.", lang="en", year=2022),
    doc("french", "Le café est très chaud ce matin.", lang="fr", year=2022),
]


def test_finds_by_words_and_ranks_more_terms_first(catalog: Catalog, database: Database) -> None:
    catalog.upsert_documents("docs", CORPUS)
    catalog.upsert_documents("other", [doc("elsewhere", "The kettle in another collection.")])
    assert found(database, "kettle") == ["kettle"]  # never another collection's chunk
    assert found(database, "xj9000") == ["ident"]
    assert found(database, "XJ9000-QZ flux") == ["ident"]
    # Stemmed: "zebras" and "boiling" find "zebra" and "boils".
    assert found(database, "boiling zebras")[0] in {"zebra", "kettle"}
    assert set(found(database, "boiling zebras")) == {"zebra", "kettle"}
    # A document with more of the terms ranks first.
    assert found(database, "kettle water tea zebra")[0] == "kettle"
    assert found(database, "café") == ["french"]
    assert found(database, "nothingmatcheswhatsoever") == []
    assert found(database, "kettle zebra", limit=1) in (["kettle"], ["zebra"])


def test_filter_applies(catalog: Catalog, database: Database) -> None:
    catalog.upsert_documents("docs", CORPUS)
    assert found(database, "the kettle zebra code", where=cond("year", Op.GTE, 2021)) in (
        ["zebra", "ident"],
        ["ident", "zebra"],
    )
    assert found(database, "café kettle", where=cond("lang", Op.EQ, "fr")) == ["french"]
    assert found(database, "kettle", where=cond("lang", Op.NE, "en")) == []


def test_writes_and_deletes_change_the_index_in_the_same_transaction(
    catalog: Catalog, database: Database
) -> None:
    catalog.upsert_documents("docs", CORPUS)
    catalog.upsert_documents("docs", [doc("kettle", "A teapot full of oolong.", lang="en")])
    assert found(database, "kettle") == []
    assert found(database, "oolong") == ["kettle"]
    catalog.delete_documents("docs", ["zebra"], None)
    assert found(database, "zebra") == []
    catalog.delete_documents("docs", [], cond("lang", Op.EQ, "fr"))
    assert found(database, "café") == []
    # A collection dropped: ON DELETE CASCADE takes its chunks and their index entries.
    catalog.delete_collection("docs")
    catalog.create_collection(CollectionSpec(name="docs"))
    assert found(database, "oolong XJ9000") == []
    with database.session_scope() as session:
        assert keyword_index.index_size(session) > 0
    if database.engine.dialect.name == "sqlite":
        with database.session_scope(write=True) as session:
            # FTS5's own check that the index agrees with the chunks table.
            session.execute(
                text("INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('integrity-check', 1)")
            )


HOSTILE = [
    '"',
    '""""',
    "'",
    "a\"b'c",
    "NEAR(kettle water)",
    "kettle NEAR water",
    "kettle AND NOT tea OR",
    "*",
    "kett*",
    "((((kettle",
    "kettle)))",
    "text: kettle",
    "{text} : kettle",
    "^kettle",
    "-kettle",
    "kettle & | ! <-> :* tea",
    "\\' \\\\ kettle",
    "\x00kettle",
    "kettle " * 2000,
    "x" * 10_000,
    "日本語のテキスト",
    "and or not",
    "the of a",
    "__ _kettle_ k_e_t",
    "🙂 kettle 🙂",
]


@pytest.mark.parametrize("query", HOSTILE)
def test_hostile_queries_never_reach_the_syntax(
    catalog: Catalog, database: Database, query: str
) -> None:
    catalog.upsert_documents("docs", CORPUS)
    hits = found(database, query)
    if "kettle" in query.replace("_", " ").split() or query.startswith(("kettle", "NEAR(kettle")):
        assert "kettle" in hits


def test_terms_are_bounded() -> None:
    terms = keyword_index.query_terms(" ".join(f"w{i}" for i in range(1000)) + " " + "y" * 500)
    assert len(terms) == keyword_index.MAX_TERMS
    assert keyword_index.query_terms('X x X_b "B" c\'d') == ["x", "b", "c", "d"]
    # Stop words go, unless nothing else is left.
    assert keyword_index.query_terms("What is the WAL for?") == ["wal"]
    assert keyword_index.query_terms("to be or not to be") == ["to", "be", "or", "not"]
    assert all(len(t) <= keyword_index.MAX_TERM_CHARS for t in keyword_index.query_terms("z" * 500))


@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(query=st.text(min_size=1, max_size=200))
def test_any_text_is_a_safe_query(catalog: Catalog, database: Database, query: str) -> None:
    found(database, query)


def test_migration_back_fills_existing_chunks(backend_settings: MetadataSettings) -> None:
    """A database at 0004 with chunks, upgraded, finds them by keyword."""
    db = Database.from_settings(backend_settings)
    try:
        config = migrations.alembic_config(db.engine)
        command.upgrade(config, "0004")
        # Rows as the 0004 schema has them, written with no keyword index.
        now = {"now": datetime(2026, 1, 1)}
        with db.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO collections (id, name, description, embedding_model, "
                    "embedding_dimension, chunk_size, chunk_overlap, vector_collection, "
                    "created_at) "
                    "VALUES (1, 'docs', '', 'all-MiniLM-L6-v2', 384, 400, 50, 'docs-x', :now)"
                ),
                now,
            )
            conn.execute(
                text(
                    "INSERT INTO documents (id, collection_id, external_id, text, content_hash, "
                    "metadata_hash, generation, incarnation, state, chunk_count, created_at, "
                    "updated_at) VALUES (1, 1, 'old', 'A venerable parchment about astrolabes.', "
                    "'h', 'm', 1, 1, 'INDEXED', 1, :now, :now)"
                ),
                now,
            )
            conn.execute(
                text(
                    "INSERT INTO chunks (id, document_id, ordinal, text, start_offset, end_offset, "
                    "state, attempts, updated_at) VALUES (1, 1, 0, "
                    "'A venerable parchment about astrolabes.', 0, 39, 'INDEXED', 0, :now)"
                ),
                now,
            )
        command.upgrade(config, "head")
        assert found(db, "astrolabes") == ["old"]
        Catalog(db, backend_settings).upsert_documents(
            "docs", [doc("new", "Fresh notes on astrolabes.")]
        )
        assert set(found(db, "astrolabe")) == {"old", "new"}
    finally:
        db.dispose()


def test_chunks_having_every_term_rank_first_however_many_have_one(
    catalog: Catalog, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL ranks a bounded candidate set (up to PG_CANDIDATES chunks
    with every term, and a share of it for each term): a common word
    matching more chunks than that never pushes out the chunk that has every
    word, or the one with a rare word, and a limit above the bound still
    gets its hits. SQLite ranks every match."""
    monkeypatch.setattr(keyword_index, "PG_CANDIDATES", 4)
    many = [doc(f"w{i:02d}", f"Widget number {i} is painted blue.") for i in range(30)]
    # Written last: the first chunks the scan meets are the common ones.
    catalog.upsert_documents("docs", many)
    worn = "The widget gasket is worn: a gasket, then another gasket, then a gasket again."
    catalog.upsert_documents("docs", [doc("both", worn)])
    assert found(database, "widget gasket", limit=3)[0] == "both"
    # No chunk has all three: the one with the rare word is still ranked
    # (and first, saying it most often).
    assert found(database, "gasket widget painted", limit=3)[0] == "both"
    assert len(found(database, "widget", limit=20)) == 20
    assert len(found(database, "widget blue", limit=31)) == 31
