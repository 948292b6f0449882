"""Document rows with their metadata and chunk rows: the upsert's set-based
writes, reads and listing pages, deletes. Functions take the caller's
session and never commit.

Writes are set-based (one INSERT/UPDATE/DELETE per table per batch, executed
with executemany or insertmanyvalues), never a statement per document.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Table,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, defer, selectinload
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import Integer

from askmojo.common.filters import (
    FilterNode,
    MetadataScalar,
)
from metadata_service.chunking import Chunk
from metadata_service.db.filters_sql import filter_clause
from metadata_service.db.models import ChunkRow, DocumentRow, MetadataRow
from metadata_service.domain import IndexState

# Bulk inserts go through Core tables: the ORM's bulk path splits rows whose
# NULL columns differ (every typed metadata row does) into one statement each.
_DOCUMENTS = cast(Table, DocumentRow.__table__)


_CHUNKS = cast(Table, ChunkRow.__table__)


_METADATA = cast(Table, MetadataRow.__table__)


@dataclass(frozen=True)
class StoredDocument:
    """What an upsert needs to know of a document already stored."""

    pk: int
    content_hash: str
    metadata_hash: str
    generation: int
    chunk_count: int
    state: IndexState
    incarnation: int


def find_documents(
    session: Session, collection_id: int, external_ids: Collection[str], *, lock: bool = False
) -> dict[str, StoredDocument]:
    """The stored state of these documents. `lock` takes row locks (FOR UPDATE
    on PostgreSQL) so concurrent writers of one document serialize and each
    change gets its own generation; SQLite's write lock already does that."""
    # Core columns, not ORM attributes: this runs inside every upsert's write
    # transaction, and skips the ORM's statement compilation layer.
    d = _DOCUMENTS.c
    stmt = select(
        d.external_id,
        d.id,
        d.content_hash,
        d.metadata_hash,
        d.generation,
        d.chunk_count,
        d.state,
        d.incarnation,
    ).where(d.collection_id == collection_id, d.external_id.in_(list(external_ids)))
    if lock:
        # One lock order for every writer, so two batches never deadlock.
        stmt = stmt.order_by(d.external_id).with_for_update()
    return {row[0]: StoredDocument(*row[1:]) for row in session.execute(stmt)}


def insert_documents(session: Session, rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Inserts document rows; returns their primary keys by external id."""
    if not rows:
        return {}
    # Each returned row names its document, so their order does not matter:
    # without sort_by_parameter_order SQLAlchemy sends one multi-row INSERT
    # ... RETURNING per batch instead of one statement per row on SQLite.
    stmt = insert(_DOCUMENTS).returning(_DOCUMENTS.c.external_id, _DOCUMENTS.c.id)
    return {external_id: pk for external_id, pk in session.execute(stmt, list(rows))}


def update_documents(session: Session, rows: Sequence[Mapping[str, Any]]) -> None:
    """Bulk UPDATE by primary key; each row carries "id"."""
    if rows:
        session.execute(update(DocumentRow), list(rows))


def write_metadata(
    session: Session,
    metadata_by_pk: Mapping[int, Mapping[str, MetadataScalar]],
    *,
    replacing: Collection[int],
) -> None:
    """Writes the metadata of the given documents, first deleting the old rows
    of those in `replacing` (new documents have none to delete)."""
    if replacing:
        session.execute(delete(MetadataRow).where(MetadataRow.document_id.in_(list(replacing))))
    rows = [
        metadata_row(pk, key, value)
        for pk, metadata in metadata_by_pk.items()
        for key, value in metadata.items()
    ]
    if rows:
        session.execute(insert(_METADATA), rows)


def metadata_row(pk: int, key: str, value: MetadataScalar) -> dict[str, Any]:
    row: dict[str, Any] = {
        "document_id": pk,
        "key": key,
        "string_value": None,
        "int_value": None,
        "float_value": None,
        "bool_value": None,
    }
    if isinstance(value, bool):
        row["bool_value"] = value
    elif isinstance(value, int):
        row["int_value"] = value
    elif isinstance(value, float):
        row["float_value"] = value
    else:
        row["string_value"] = value
    return row


def metadata_value(row: MetadataRow) -> MetadataScalar:
    for value in (row.bool_value, row.int_value, row.float_value, row.string_value):
        if value is not None:
            return value
    raise ValueError(f"metadata row {row.document_id}/{row.key} has no value")


def write_chunks(
    session: Session,
    chunks_by_pk: Mapping[int, Sequence[Chunk]],
    now: datetime,
    *,
    replacing: Collection[int],
    lease: datetime | None = None,
) -> None:
    """Writes the chunks of the given documents, all PENDING (the outbox),
    first deleting the old chunks of those in `replacing`; held under
    `lease` when the writer indexes them itself."""
    if replacing:
        session.execute(delete(ChunkRow).where(ChunkRow.document_id.in_(list(replacing))))
    rows = [
        {
            "document_id": pk,
            "ordinal": chunk.ordinal,
            "text": chunk.text,
            "start_offset": chunk.start,
            "end_offset": chunk.end,
            "state": IndexState.PENDING,
            "error": None,
            "attempts": 0,
            "updated_at": now,
            "lease_until": lease,
            "truncated": False,
        }
        for pk, chunks in chunks_by_pk.items()
        for chunk in chunks
    ]
    if rows:
        session.execute(insert(_CHUNKS), rows)


def mark_chunks_pending(
    session: Session,
    document_pks: Collection[int],
    now: datetime,
    *,
    lease: datetime | None = None,
) -> None:
    """Queues the chunks again (metadata changed, or indexing failed). A new
    lease (or none) also voids any older one: an acknowledgement still in
    flight for the old content then lands nowhere."""
    if document_pks:
        session.execute(
            update(ChunkRow)
            .where(ChunkRow.document_id.in_(list(document_pks)))
            .values(state=IndexState.PENDING, error=None, updated_at=now, lease_until=lease)
        )


def get_document(
    session: Session, collection_id: int, external_id: str, *, include_text: bool
) -> DocumentRow | None:
    stmt = (
        select(DocumentRow)
        .where(DocumentRow.collection_id == collection_id, DocumentRow.external_id == external_id)
        .options(selectinload(DocumentRow.metadata_entries))
    )
    if not include_text:
        stmt = stmt.options(defer(DocumentRow.text))
    return session.scalars(stmt).one_or_none()


class _ByteLength(FunctionElement[int]):
    """Bytes of a text's UTF-8 form. SQLite's length() counts characters and
    its octet_length() is only in 3.43 and later."""

    type = Integer()
    inherit_cache = True


@compiles(_ByteLength)
def _byte_length(element: _ByteLength, compiler: Any, **kw: Any) -> str:
    return f"octet_length({compiler.process(element.clauses, **kw)})"


@compiles(_ByteLength, "sqlite")
def _byte_length_sqlite(element: _ByteLength, compiler: Any, **kw: Any) -> str:
    return f"length(CAST({compiler.process(element.clauses, **kw)} AS BLOB))"


@dataclass(frozen=True)
class DocumentSize:
    """What a listed document weighs, known before its text is read: bytes of
    its id, text (when listed), error, metadata keys and string values, and
    the number of its metadata entries."""

    pk: int
    external_id: str
    data_bytes: int
    metadata_entries: int


def _listed(
    stmt: Any,
    collection_id: int,
    where: FilterNode | None,
    states: Collection[IndexState],
) -> Any:
    stmt = stmt.where(DocumentRow.collection_id == collection_id)
    if where is not None:
        stmt = stmt.where(filter_clause(where))
    if states:
        stmt = stmt.where(DocumentRow.state.in_(list(states)))
    return stmt


def list_document_sizes(
    session: Session,
    collection_id: int,
    *,
    where: FilterNode | None,
    states: Collection[IndexState],
    after: str | None,
    limit: int,
    include_text: bool,
) -> list[DocumentSize]:
    """Keyset page ordered by external id (rows inserted meanwhile never shift
    a page, so nothing is skipped or repeated), as sizes: the caller picks
    what fits a response and loads only that (`list_documents`)."""
    value_bytes = _ByteLength(MetadataRow.key) + func.coalesce(
        _ByteLength(MetadataRow.string_value), 0
    )
    metadata_bytes = (
        select(func.coalesce(func.sum(value_bytes), 0))
        .where(MetadataRow.document_id == DocumentRow.id)
        .scalar_subquery()
    )
    data_bytes = (
        _ByteLength(DocumentRow.external_id)
        + func.coalesce(_ByteLength(DocumentRow.error), 0)
        + metadata_bytes
    )
    if include_text:
        data_bytes = data_bytes + _ByteLength(DocumentRow.text)
    metadata_entries = (
        select(func.count()).where(MetadataRow.document_id == DocumentRow.id).scalar_subquery()
    )
    stmt = _listed(
        select(DocumentRow.id, DocumentRow.external_id, data_bytes, metadata_entries),
        collection_id,
        where,
        states,
    )
    if after is not None:
        stmt = stmt.where(DocumentRow.external_id > after)
    stmt = stmt.order_by(DocumentRow.external_id).limit(limit)
    return [
        DocumentSize(int(pk), external_id, int(size), int(count))
        for pk, external_id, size, count in session.execute(stmt)
    ]


def list_documents(
    session: Session,
    collection_id: int,
    pks: Collection[int],
    *,
    where: FilterNode | None,
    states: Collection[IndexState],
    include_text: bool,
) -> Sequence[DocumentRow]:
    """The documents `list_document_sizes` picked, in id order; the filter is
    applied again, for a database that shows each statement the changes
    committed since the last (PostgreSQL's READ COMMITTED)."""
    stmt = _listed(
        select(DocumentRow).where(DocumentRow.id.in_(list(pks))),
        collection_id,
        where,
        states,
    )
    stmt = stmt.order_by(DocumentRow.external_id).options(
        selectinload(DocumentRow.metadata_entries)
    )
    if not include_text:
        stmt = stmt.options(defer(DocumentRow.text))
    return session.scalars(stmt).all()


def delete_documents(
    session: Session,
    collection_id: int,
    *,
    external_ids: Collection[str] | None = None,
    pks: Collection[int] | None = None,
) -> list[DeletedDocument]:
    """Deletes by ids or by primary keys (chunks and metadata cascade);
    returns what the vectors' deletion needs of each."""
    stmt = delete(DocumentRow).where(DocumentRow.collection_id == collection_id)
    if external_ids is not None:
        stmt = stmt.where(DocumentRow.external_id.in_(list(external_ids)))
    if pks is not None:
        stmt = stmt.where(DocumentRow.id.in_(list(pks)))
    returned = session.execute(
        stmt.returning(DocumentRow.external_id, DocumentRow.incarnation, DocumentRow.generation)
    )
    return [DeletedDocument(*row) for row in returned]


@dataclass(frozen=True)
class DeletedDocument:
    external_id: str
    incarnation: int
    generation: int


def newest_document_pk(session: Session, collection_id: int) -> int:
    """The highest document row id of a collection now (0: none)."""
    stmt = select(func.coalesce(func.max(DocumentRow.id), 0)).where(
        DocumentRow.collection_id == collection_id
    )
    return int(session.execute(stmt).scalar_one())


def matching_document_pks(
    session: Session,
    collection_id: int,
    where: FilterNode,
    *,
    after: int,
    through: int,
    limit: int,
) -> list[int]:
    """Up to `limit` row ids, lowest first, of the documents matching `where`
    with ids in (after, through]: a delete by filter takes them a batch at a
    time, never all at once, each batch's scan starting where the last ended."""
    stmt = (
        select(DocumentRow.id)
        .where(
            DocumentRow.collection_id == collection_id,
            DocumentRow.id > after,
            DocumentRow.id <= through,
            filter_clause(where),
        )
        .order_by(DocumentRow.id)
        .limit(limit)
    )
    return list(session.scalars(stmt))
