"""A collection's chunk unit (issue #14): TOKENS of the model's tokenizer by
default, CHARACTERS when asked for or when a size comes without a unit (as
clients meant it before units existed); sizes in tokens stay inside the
model's window; collections made before migration 0006 count characters."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text

from metadata_service.catalog import Catalog
from metadata_service.config import MetadataSettings
from metadata_service.db.engine import Database
from metadata_service.domain import ChunkingSpec, ChunkUnit, CollectionSpec, DocumentInput
from metadata_service.errors import InvalidArgument
from metadata_service.server import prepare_database
from metadata_service.tokenizer import tokenizer_for


@pytest.fixture
def catalog(backend_settings: MetadataSettings) -> Iterator[Catalog]:
    prepare_database(backend_settings)
    db = Database.from_settings(backend_settings)
    yield Catalog(db, backend_settings)
    db.dispose()


def test_default_unit_is_tokens_and_sizes_without_unit_are_characters(catalog: Catalog) -> None:
    assert catalog.create_collection(CollectionSpec(name="plain")).chunking == ChunkingSpec(
        128, 16, ChunkUnit.TOKENS
    )
    assert catalog.create_collection(
        CollectionSpec(name="sized", chunk_size=300)
    ).chunking == ChunkingSpec(300, 50, ChunkUnit.CHARACTERS)
    assert catalog.create_collection(
        CollectionSpec(name="chars", chunk_unit=ChunkUnit.CHARACTERS)
    ).chunking == ChunkingSpec(400, 50, ChunkUnit.CHARACTERS)
    got = catalog.create_collection(
        CollectionSpec(name="tok", chunk_size=254, chunk_overlap=30, chunk_unit=ChunkUnit.TOKENS)
    )
    assert got.chunking == ChunkingSpec(254, 30, ChunkUnit.TOKENS)
    assert catalog.get_collection("tok").chunking == got.chunking
    # Another model: no tokenizer here, so characters by default, TOKENS refused.
    other = CollectionSpec(name="other", model="other-model", dimension=8)
    assert catalog.create_collection(other).chunking.unit == ChunkUnit.CHARACTERS
    with pytest.raises(InvalidArgument, match="tokenizer") as caught:
        catalog.create_collection(
            CollectionSpec(name="other2", model="m2", dimension=8, chunk_unit=ChunkUnit.TOKENS)
        )
    assert caught.value.violations[0][0] == "chunking.unit"


@pytest.mark.parametrize(("size", "overlap"), [(255, 0), (1000, 0), (10, 0), (100, 50)])
def test_token_sizes_outside_the_window_are_refused(
    catalog: Catalog, size: int, overlap: int
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        catalog.create_collection(
            CollectionSpec(
                name="big", chunk_size=size, chunk_overlap=overlap, chunk_unit=ChunkUnit.TOKENS
            )
        )
    field = "chunking.chunk_overlap" if overlap else "chunking.chunk_size"
    assert caught.value.violations[0][0] == field
    if not overlap:
        assert "between 16 and 254 tokens" in str(caught.value)


def test_tokens_collection_chunks_within_the_window(catalog: Catalog) -> None:
    catalog.create_collection(
        CollectionSpec(name="tok", chunk_size=64, chunk_overlap=8, chunk_unit=ChunkUnit.TOKENS)
    )
    text_ = "# Heading\n\n" + "A sentence of several words here. " * 100
    catalog.upsert_documents("tok", [DocumentInput("a", text_, {})])
    doc = catalog.get_collection("tok")
    tokenizer = tokenizer_for("all-MiniLM-L6-v2")
    assert tokenizer is not None
    assert doc.chunk_count == len(catalog_chunks(catalog, "tok"))
    for chunk in catalog_chunks(catalog, "tok"):
        assert tokenizer.count(chunk) <= 64


def catalog_chunks(catalog: Catalog, name: str) -> list[str]:
    db: Database = catalog._db  # the chunks as stored
    with db.session_scope() as session:
        rows = session.execute(
            text(
                "SELECT ch.text FROM chunks ch JOIN documents d ON d.id = ch.document_id "
                "JOIN collections c ON c.id = d.collection_id WHERE c.name = :n ORDER BY ch.ordinal"
            ),
            {"n": name},
        )
        return [r[0] for r in rows]


def test_collections_before_migration_0006_count_characters(
    backend_settings: MetadataSettings,
) -> None:
    from alembic import command

    from metadata_service.migrations import alembic_config

    db = Database.from_settings(backend_settings)
    config = alembic_config(db.engine)
    command.upgrade(config, "0005")
    try:
        with db.session_scope(write=True) as session:
            session.execute(
                text(
                    "INSERT INTO collections (name, description, embedding_model, "
                    "embedding_dimension, chunk_size, chunk_overlap, vector_collection, created_at)"
                    " VALUES ('old', '', 'all-MiniLM-L6-v2', 384, 700, 70, 'old-1', "
                    "CURRENT_TIMESTAMP)"
                )
            )
        command.upgrade(config, "head")
        old = Catalog(db, backend_settings).get_collection("old")
        assert old.chunking == ChunkingSpec(700, 70, ChunkUnit.CHARACTERS)
    finally:
        db.dispose()
