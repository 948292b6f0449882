"""The service layer and its queries against real databases: every test runs
on a SQLite file and again on PostgreSQL (skipped with a reason when absent)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from askmojo.common.filters import FilterNode, Op
from metadata_service.catalog import Catalog
from metadata_service.config import MetadataSettings
from metadata_service.db import document_queries
from metadata_service.db.engine import Database
from metadata_service.db.models import ChunkRow, DocumentRow, MetadataRow
from metadata_service.domain import (
    CollectionSpec,
    DocumentInput,
    DocumentQuery,
    IndexState,
    UpsertState,
)
from metadata_service.errors import Aborted, AlreadyExists, InvalidArgument, NotFound
from metadata_service.outbox import Outbox
from metadata_service.server import prepare_database
from tests.filter_cases import FILTER_CASES, FILTER_RECORDS, cond

T = TypeVar("T")


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
    return cat


def doc(doc_id: str, text: str = "Some text about things.", **metadata: object) -> DocumentInput:
    return DocumentInput(doc_id, text, metadata)  # type: ignore[arg-type]


def ids(catalog: Catalog, where: FilterNode | None = None, **kwargs: object) -> list[str]:
    page = catalog.list_documents(DocumentQuery("docs", filter=where, page_size=1000, **kwargs))  # type: ignore[arg-type]
    return [d.id for d in page.items]


# --- collections -------------------------------------------------------------


def test_collection_lifecycle(database: Database, backend_settings: MetadataSettings) -> None:
    catalog = Catalog(database, backend_settings)
    created = catalog.create_collection(CollectionSpec(name="papers", description="PDFs"))
    assert (created.model, created.dimension) == ("all-MiniLM-L6-v2", 384)
    assert created.chunking.chunk_size == backend_settings.default_chunk_size_tokens
    with pytest.raises(AlreadyExists, match="papers"):
        catalog.create_collection(CollectionSpec(name="papers"))
    catalog.upsert_documents("papers", [doc("a", "x " * 500), doc("b")])
    got = catalog.get_collection("papers")
    assert got.document_count == 2
    assert got.chunk_count >= 3
    outcome = catalog.delete_collection("papers")
    assert (outcome.deleted_documents, outcome.deleted_chunks) == (2, got.chunk_count)
    with pytest.raises(NotFound):
        catalog.get_collection("papers")
    # The cascade reached every table.
    with database.session_scope() as session:
        for model in (DocumentRow, ChunkRow, MetadataRow):
            assert session.scalar(select(func.count()).select_from(model)) == 0


def test_list_collections_pages_in_name_order(
    database: Database, backend_settings: MetadataSettings
) -> None:
    catalog = Catalog(database, backend_settings)
    names = [f"col-{i:02d}" for i in range(7)]
    for name in reversed(names):
        catalog.create_collection(CollectionSpec(name=name))
    seen, token = [], ""
    while True:
        page = catalog.list_collections(3, token)
        seen += [c.name for c in page.items]
        token = page.next_page_token
        if not token:
            break
    assert seen == names


@pytest.mark.parametrize("name", ["ab", "-abc", "abc-", "a..b", "has space", "x" * 64, "ünï"])
def test_invalid_collection_names_are_explained(catalog: Catalog, name: str) -> None:
    with pytest.raises(InvalidArgument, match="3 to 63 characters"):
        catalog.create_collection(CollectionSpec(name=name))


# --- upsert --------------------------------------------------------------------


def test_upsert_new_unchanged_changed(catalog: Catalog, database: Database) -> None:
    first = catalog.upsert_documents("docs", [doc("a", tag="x"), doc("b")])
    assert [o.state for o in first] == [UpsertState.PENDING, UpsertState.PENDING]
    assert all(o.generation == 1 and o.chunk_count == 1 for o in first)

    again = catalog.upsert_documents("docs", [doc("a", tag="x"), doc("b")])
    assert [o.state for o in again] == [UpsertState.UNCHANGED, UpsertState.UNCHANGED]
    assert [o.id for o in again] == ["a", "b"]

    with database.session_scope() as session:
        before = {r.external_id: r.updated_at for r in session.scalars(select(DocumentRow))}
    a_chunks_before = a_chunk_ids(database)
    changed = catalog.upsert_documents(
        "docs", [doc("a", tag="y"), doc("b", "New text. " * 40), doc("c")]
    )
    assert [(o.state, o.generation) for o in changed] == [
        (UpsertState.PENDING, 2),
        (UpsertState.PENDING, 2),
        (UpsertState.PENDING, 1),
    ]
    a = catalog.get_document("docs", "a", include_text=True)
    assert a.metadata == {"tag": "y"}
    assert a.state is IndexState.PENDING
    b = catalog.get_document("docs", "b", include_text=True)
    assert b.text == "New text. " * 40
    assert b.chunk_count == changed[1].chunk_count > 1
    with database.session_scope() as session:
        after = {r.external_id: r.updated_at for r in session.scalars(select(DocumentRow))}
        rows = session.scalars(select(ChunkRow).order_by(ChunkRow.document_id, ChunkRow.ordinal))
        chunks = list(rows)
    assert after["a"] > before["a"]
    by_doc: dict[int, list[str]] = {}
    for chunk in chunks:
        by_doc.setdefault(chunk.document_id, []).append(chunk.text)
    # b's chunks were replaced by the new text's; a kept its very chunk row.
    assert sorted(len(texts) for texts in by_doc.values()) == sorted([1, b.chunk_count, 1])
    assert any(texts[0].startswith("New text.") for texts in by_doc.values())
    assert a_chunk_ids(database) == a_chunks_before
    assert all(c.state is IndexState.PENDING for c in chunks)


def a_chunk_ids(database: Database) -> list[int]:
    with database.session_scope() as session:
        stmt = (
            select(ChunkRow.id)
            .join(DocumentRow, DocumentRow.id == ChunkRow.document_id)
            .where(DocumentRow.external_id == "a")
        )
        return list(session.scalars(stmt))


def test_failed_document_is_queued_again_when_resent(catalog: Catalog, database: Database) -> None:
    catalog.upsert_documents("docs", [doc("a")])
    with database.session_scope(write=True) as session:
        row = session.scalars(select(DocumentRow)).one()
        row.state, row.error = IndexState.FAILED, "vector service said no"
        for chunk in session.scalars(select(ChunkRow)):
            chunk.state = IndexState.FAILED
    outcome = catalog.upsert_documents("docs", [doc("a")])[0]
    assert outcome.state is UpsertState.PENDING
    again = catalog.get_document("docs", "a", include_text=False)
    assert (again.state, again.error) == (IndexState.PENDING, None)
    with database.session_scope() as session:
        assert {c.state for c in session.scalars(select(ChunkRow))} == {IndexState.PENDING}


def test_unchanged_resend_writes_nothing(catalog: Catalog, database: Database) -> None:
    catalog.upsert_documents("docs", [doc("a", n=1)])
    with database.session_scope() as session:
        row = session.scalars(select(DocumentRow)).one()
        stamp, generation = row.updated_at, row.generation
    assert catalog.upsert_documents("docs", [doc("a", n=1)])[0].state is UpsertState.UNCHANGED
    with database.session_scope() as session:
        row = session.scalars(select(DocumentRow)).one()
        assert (row.updated_at, row.generation) == (stamp, generation)


def test_metadata_types_are_part_of_identity(catalog: Catalog) -> None:
    catalog.upsert_documents("docs", [doc("a", v=1)])
    outcome = catalog.upsert_documents("docs", [doc("a", v=1.0)])[0]
    assert outcome.state is UpsertState.PENDING
    assert catalog.get_document("docs", "a", include_text=False).metadata == {"v": 1.0}
    assert isinstance(catalog.get_document("docs", "a", include_text=False).metadata["v"], float)


def test_one_bad_document_does_not_fail_the_batch(catalog: Catalog) -> None:
    outcomes = catalog.upsert_documents(
        "docs",
        [
            doc("good-1"),
            doc("", "text"),
            doc("bad key", **{"a b": 1}),
            doc("good-2"),
            doc("good-1"),
        ],
    )
    assert [o.state for o in outcomes] == [
        UpsertState.PENDING,
        UpsertState.FAILED,
        UpsertState.FAILED,
        UpsertState.PENDING,
        UpsertState.FAILED,
    ]
    assert isinstance(outcomes[1].error, InvalidArgument)
    assert "documents[1].id" in str(outcomes[1].error)
    assert "also at documents[0]" in str(outcomes[4].error)
    assert ids(catalog) == ["good-1", "good-2"]


def test_unknown_collection(catalog: Catalog) -> None:
    with pytest.raises(NotFound, match="nope"):
        catalog.upsert_documents("nope", [doc("a")])
    with pytest.raises(NotFound):
        catalog.list_documents(DocumentQuery("nope"))


def test_collection_recreated_between_lookup_and_write_aborts_the_batch(
    catalog: Catalog, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch was chunked with the old collection's settings: it must not
    land in a collection created again meanwhile (with other settings, and
    on SQLite under the very same row id) as if nothing happened."""
    write = database.write
    before = Outbox(database).collection("docs").id

    def recreate_first(work: Callable[[Session], T]) -> T:
        monkeypatch.setattr(database, "write", write)
        catalog.delete_collection("docs")
        catalog.create_collection(CollectionSpec(name="docs", chunk_size=300, chunk_overlap=0))
        return write(work)

    monkeypatch.setattr(database, "write", recreate_first)
    with pytest.raises(Aborted, match="re-created meanwhile; send the batch again"):
        catalog.upsert_documents("docs", [doc("a", "x " * 400)])
    if database.engine.dialect.name == "sqlite":
        assert Outbox(database).collection("docs").id == before  # the id was reused
    assert ids(catalog) == []
    # Sent again, the batch is chunked with the new settings.
    catalog.upsert_documents("docs", [doc("a", "x " * 400)])
    assert catalog.get_document("docs", "a", include_text=False).chunk_count == 3


def test_document_round_trip_of_every_metadata_type(catalog: Catalog) -> None:
    metadata = {"s": "text", "i": -(2**62), "f": 2.5, "t": True, "u": "ünïcødé ✓"}
    catalog.upsert_documents("docs", [doc("doc/with:odd#chars ✓", "Body.", **metadata)])
    got = catalog.get_document("docs", "doc/with:odd#chars ✓", include_text=True)
    assert got.metadata == metadata
    assert type(got.metadata["t"]) is bool
    assert type(got.metadata["i"]) is int
    assert got.text == "Body."
    assert len(got.content_hash) == 64
    assert catalog.get_document("docs", "doc/with:odd#chars ✓", include_text=False).text is None


# --- filters: the same semantics as Chroma's `where` ----------------------------


@pytest.fixture
def filtered(catalog: Catalog) -> Catalog:
    catalog.upsert_documents(
        "docs", [doc(record_id, **metadata) for record_id, metadata in FILTER_RECORDS.items()]
    )
    return catalog


@pytest.mark.parametrize(("where", "expected"), FILTER_CASES)
def test_filter_semantics(filtered: Catalog, where: FilterNode, expected: list[str]) -> None:
    assert ids(filtered, where) == expected


def test_state_filter(filtered: Catalog) -> None:
    assert len(ids(filtered, states=frozenset({IndexState.PENDING}))) == 5
    assert ids(filtered, states=frozenset({IndexState.INDEXED})) == []


# --- pagination -----------------------------------------------------------------


def test_pagination_is_stable_under_concurrent_inserts(catalog: Catalog) -> None:
    """Documents inserted between page fetches, before and after the cursor,
    never make a page repeat or skip a document that was there throughout."""
    catalog.upsert_documents("docs", [doc(f"doc-{i:03d}") for i in range(0, 60, 2)])
    seen: list[str] = []
    token = ""
    fetches = 0
    while True:
        page = catalog.list_documents(DocumentQuery("docs", page_size=7, page_token=token))
        seen += [d.id for d in page.items]
        token = page.next_page_token
        if not token:
            break
        fetches += 1
        # One id just before the cursor (never listed now), one just after it
        # (listed later), one at the very start: all while paging.
        last = int(seen[-1].removeprefix("doc-"))
        catalog.upsert_documents(
            "docs", [doc(f"doc-{last - 1:03d}"), doc(f"doc-{last + 1:03d}"), doc(f"aaa-{fetches}")]
        )
    assert fetches >= 3
    assert seen == sorted(set(seen)), "a document was repeated or the order broke"
    assert {f"doc-{i:03d}" for i in range(0, 60, 2)} <= set(seen), "an old document was skipped"
    assert not any(i.startswith("aaa-") for i in seen), "a page moved backwards"


def test_page_token_is_bound_to_its_query(filtered: Catalog) -> None:
    page = filtered.list_documents(DocumentQuery("docs", page_size=2))
    assert page.next_page_token
    with pytest.raises(InvalidArgument, match="not valid for this query"):
        filtered.list_documents(
            DocumentQuery(
                "docs",
                page_size=2,
                page_token=page.next_page_token,
                filter=cond("kind", Op.EQ, "a"),
            )
        )
    with pytest.raises(InvalidArgument, match="not valid for this query"):
        filtered.list_documents(DocumentQuery("docs", page_token="not-a-token!"))


def test_page_tokens_hold_across_catalogs_of_one_database(
    filtered: Catalog, database: Database, backend_settings: MetadataSettings
) -> None:
    """Worker processes and replicas each have their own Catalog: the secret
    kept in the database signs for all of them."""
    page = filtered.list_documents(DocumentQuery("docs", page_size=2))
    other = Catalog(database, backend_settings)
    rest = other.list_documents(
        DocumentQuery("docs", page_size=100, page_token=page.next_page_token)
    )
    assert [d.id for d in page.items] + [d.id for d in rest.items] == ids(filtered)


def test_page_token_secret_setting_signs_instead(
    filtered: Catalog, database: Database, backend_settings: MetadataSettings
) -> None:
    configured = backend_settings.model_copy(update={"page_token_secret": SecretStr("k" * 32)})
    mine, theirs = Catalog(database, configured), Catalog(database, configured)
    page = mine.list_documents(DocumentQuery("docs", page_size=2))
    assert theirs.list_documents(DocumentQuery("docs", page_token=page.next_page_token)).items
    with pytest.raises(InvalidArgument, match="not valid for this query"):
        filtered.list_documents(DocumentQuery("docs", page_token=page.next_page_token))


def test_pages_fit_the_message_limit_and_load_only_what_fits(
    database: Database, backend_settings: MetadataSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Documents of ~1 MiB and a 4 MiB message limit: each page carries what
    fits (3 here) and a token, page_size notwithstanding, and only those
    texts are ever loaded."""
    small = backend_settings.model_copy(update={"max_message_bytes": 4 * 1024 * 1024})
    catalog = Catalog(database, small)
    catalog.create_collection(CollectionSpec(name="big"))
    big = "word " * (1024 * 1024 // 5 - 10)
    stored = [f"d{i:02d}" for i in range(8)]
    catalog.upsert_documents("big", [doc(i, big, n=i) for i in stored])
    catalog.upsert_documents("big", [doc("e-small", "tiny")])
    loaded: list[int] = []
    list_documents = document_queries.list_documents

    def counting(*args: object, **kwargs: object) -> object:
        rows = list_documents(*args, **kwargs)  # type: ignore[arg-type]
        loaded.append(len(rows))
        return rows

    monkeypatch.setattr(document_queries, "list_documents", counting)
    seen: list[str] = []
    token = ""
    while True:
        page = catalog.list_documents(
            DocumentQuery("big", page_size=1000, page_token=token, include_text=True)
        )
        assert 1 <= len(page.items) <= 3
        assert sum(len(d.text or "") for d in page.items) <= 4 * 1024 * 1024 - 8 * 1024
        seen += [d.id for d in page.items]
        token = page.next_page_token
        if not token:
            break
    assert seen == [*stored, "e-small"]
    assert max(loaded) == 3 and sum(loaded) == len(seen)
    # Without texts, the whole collection is one page.
    basic = catalog.list_documents(DocumentQuery("big", page_size=1000))
    assert (len(basic.items), basic.next_page_token) == (9, "")


def test_one_document_a_page_when_only_one_fits(
    database: Database, backend_settings: MetadataSettings
) -> None:
    tight = backend_settings.model_copy(update={"max_message_bytes": 1024 * 1024 + 20 * 1024})
    catalog = Catalog(database, tight)
    catalog.create_collection(CollectionSpec(name="big"))
    catalog.upsert_documents("big", [doc(f"d{i}", "x " * (512 * 1024 - 8)) for i in range(3)])
    page = catalog.list_documents(DocumentQuery("big", page_size=10, include_text=True))
    assert [d.id for d in page.items] == ["d0"] and page.next_page_token


# --- delete and stats -------------------------------------------------------------


def test_delete_by_ids_and_by_filter(filtered: Catalog, database: Database) -> None:
    outcome = filtered.delete_documents("docs", ["int1", "missing"], None)
    assert (outcome.deleted_count, list(outcome.not_found_ids)) == (1, ["missing"])
    outcome = filtered.delete_documents("docs", [], cond("kind", Op.EQ, "a"))
    assert outcome.deleted_count == 1
    assert ids(filtered) == ["float25", "none", "str"]
    with database.session_scope() as session:
        live = set(session.scalars(select(DocumentRow.id)))
        assert set(session.scalars(select(ChunkRow.document_id))) == live
        assert set(session.scalars(select(MetadataRow.document_id))) <= live


def test_delete_needs_exactly_one_selector(filtered: Catalog) -> None:
    with pytest.raises(InvalidArgument, match="exactly one"):
        filtered.delete_documents("docs", [], None)
    with pytest.raises(InvalidArgument, match="exactly one"):
        filtered.delete_documents("docs", ["a"], cond("kind", Op.EQ, "a"))
    assert len(ids(filtered)) == 5


def test_stats(filtered: Catalog, backend_settings: MetadataSettings) -> None:
    stats = filtered.stats("")
    assert stats.documents_by_state == {IndexState.PENDING: 5}
    assert stats.chunk_count == 5
    assert stats.pool.size == backend_settings.pool_size
    assert stats.pool.max_overflow == backend_settings.max_overflow
    assert stats.storage.database_bytes > 0
    if stats.storage.dialect == "sqlite":
        assert stats.storage.journal_mode == "wal"
    assert filtered.stats("docs").chunk_count == 5
    with pytest.raises(NotFound):
        filtered.stats("other")


def test_concurrent_writers_of_the_same_documents(catalog: Catalog) -> None:
    """Every change gets its own generation, even when writers race on the same
    ids (row locks on PostgreSQL, the write lock on SQLite); no writer fails."""
    writers, doc_ids = 6, [f"shared-{i}" for i in range(20)]
    errors: list[BaseException] = []

    def write(version: int) -> None:
        try:
            outcomes = catalog.upsert_documents(
                "docs", [doc(d, f"Version {version} of {d}.") for d in doc_ids]
            )
            assert all(o.state is UpsertState.PENDING for o in outcomes)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(v,)) for v in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for doc_id in doc_ids:
        assert catalog.get_document("docs", doc_id, include_text=False).generation == writers
