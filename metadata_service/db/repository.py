"""Queries. Every function takes the caller's session and never commits:
transactions belong to the service layer (`catalog.py`).

Writes are set-based (one INSERT/UPDATE/DELETE per table per batch, executed
with executemany or insertmanyvalues), never a statement per document.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Double,
    Table,
    and_,
    delete,
    exists,
    func,
    insert,
    literal,
    not_,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session, defer, selectinload

from askmojo.common.filters import (
    AllOf,
    AnyOf,
    Condition,
    FilterNode,
    MetadataScalar,
    Op,
    value_kind,
)
from metadata_service.chunking import Chunk
from metadata_service.db.models import (
    ChunkRow,
    CollectionRow,
    DocumentRow,
    IndexState,
    MetadataRow,
)

# Bulk inserts go through Core tables: the ORM's bulk path splits rows whose
# NULL columns differ (every typed metadata row does) into one statement each.
_DOCUMENTS = cast(Table, DocumentRow.__table__)
_CHUNKS = cast(Table, ChunkRow.__table__)
_METADATA = cast(Table, MetadataRow.__table__)

# --- collections -------------------------------------------------------------


def get_collection(session: Session, name: str) -> CollectionRow | None:
    return session.scalars(select(CollectionRow).where(CollectionRow.name == name)).one_or_none()


def add_collection(session: Session, row: CollectionRow) -> CollectionRow:
    session.add(row)
    session.flush()
    return row


def list_collections(session: Session, after: str | None, limit: int) -> Sequence[CollectionRow]:
    stmt = select(CollectionRow).order_by(CollectionRow.name).limit(limit)
    if after is not None:
        stmt = stmt.where(CollectionRow.name > after)
    return session.scalars(stmt).all()


@dataclass(frozen=True)
class CollectionCounts:
    documents: int = 0
    chunks: int = 0


def collection_counts(
    session: Session, collection_ids: Iterable[int]
) -> dict[int, CollectionCounts]:
    stmt = (
        select(
            DocumentRow.collection_id,
            func.count(),
            func.coalesce(func.sum(DocumentRow.chunk_count), 0),
        )
        .where(DocumentRow.collection_id.in_(list(collection_ids)))
        .group_by(DocumentRow.collection_id)
    )
    return {
        cid: CollectionCounts(int(docs), int(chunks)) for cid, docs, chunks in session.execute(stmt)
    }


def delete_collection(session: Session, collection_id: int) -> None:
    # Documents, chunks and metadata go through ON DELETE CASCADE.
    session.execute(delete(CollectionRow).where(CollectionRow.id == collection_id))


# --- documents: upsert -------------------------------------------------------


@dataclass(frozen=True)
class StoredDocument:
    """What an upsert needs to know of a document already stored."""

    pk: int
    content_hash: str
    metadata_hash: str
    generation: int
    chunk_count: int
    state: IndexState


def find_documents(
    session: Session, collection_id: int, external_ids: Collection[str], *, lock: bool = False
) -> dict[str, StoredDocument]:
    """The stored state of these documents. `lock` takes row locks (FOR UPDATE
    on PostgreSQL) so concurrent writers of one document serialize and each
    change gets its own generation; SQLite's write lock already does that."""
    stmt = select(
        DocumentRow.external_id,
        DocumentRow.id,
        DocumentRow.content_hash,
        DocumentRow.metadata_hash,
        DocumentRow.generation,
        DocumentRow.chunk_count,
        DocumentRow.state,
    ).where(
        DocumentRow.collection_id == collection_id,
        DocumentRow.external_id.in_(list(external_ids)),
    )
    if lock:
        # One lock order for every writer, so two batches never deadlock.
        stmt = stmt.order_by(DocumentRow.external_id).with_for_update()
    return {row[0]: StoredDocument(*row[1:]) for row in session.execute(stmt)}


def insert_documents(session: Session, rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Inserts document rows; returns their primary keys by external id."""
    if not rows:
        return {}
    stmt = insert(_DOCUMENTS).returning(
        _DOCUMENTS.c.external_id, _DOCUMENTS.c.id, sort_by_parameter_order=True
    )
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
) -> None:
    """Writes the chunks of the given documents, all PENDING (the outbox),
    first deleting the old chunks of those in `replacing`."""
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
        }
        for pk, chunks in chunks_by_pk.items()
        for chunk in chunks
    ]
    if rows:
        session.execute(insert(_CHUNKS), rows)


def mark_chunks_pending(session: Session, document_pks: Collection[int], now: datetime) -> None:
    if document_pks:
        session.execute(
            update(ChunkRow)
            .where(ChunkRow.document_id.in_(list(document_pks)))
            .values(state=IndexState.PENDING, error=None, updated_at=now)
        )


# --- documents: read and delete ----------------------------------------------


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


def list_documents(
    session: Session,
    collection_id: int,
    *,
    where: FilterNode | None,
    states: Collection[IndexState],
    after: str | None,
    limit: int,
    include_text: bool,
) -> Sequence[DocumentRow]:
    """Keyset page ordered by external id: rows inserted meanwhile never shift
    a page, so nothing is skipped or repeated."""
    stmt = (
        select(DocumentRow)
        .where(DocumentRow.collection_id == collection_id)
        .order_by(DocumentRow.external_id)
        .limit(limit)
        .options(selectinload(DocumentRow.metadata_entries))
    )
    if where is not None:
        stmt = stmt.where(filter_clause(where))
    if states:
        stmt = stmt.where(DocumentRow.state.in_(list(states)))
    if after is not None:
        stmt = stmt.where(DocumentRow.external_id > after)
    if not include_text:
        stmt = stmt.options(defer(DocumentRow.text))
    return session.scalars(stmt).all()


def delete_documents(
    session: Session,
    collection_id: int,
    *,
    external_ids: Collection[str] | None = None,
    where: FilterNode | None = None,
) -> list[str]:
    """Deletes by ids or by filter (chunks and metadata cascade); returns the
    external ids deleted."""
    stmt = delete(DocumentRow).where(DocumentRow.collection_id == collection_id)
    if external_ids is not None:
        stmt = stmt.where(DocumentRow.external_id.in_(list(external_ids)))
    if where is not None:
        stmt = stmt.where(filter_clause(where))
    return list(session.scalars(stmt.returning(DocumentRow.external_id)))


def documents_by_state(session: Session, collection_id: int | None) -> dict[IndexState, int]:
    stmt = select(DocumentRow.state, func.count()).group_by(DocumentRow.state)
    if collection_id is not None:
        stmt = stmt.where(DocumentRow.collection_id == collection_id)
    return {IndexState(state): int(count) for state, count in session.execute(stmt)}


def chunk_total(session: Session, collection_id: int | None) -> int:
    stmt = select(func.coalesce(func.sum(DocumentRow.chunk_count), 0))
    if collection_id is not None:
        stmt = stmt.where(DocumentRow.collection_id == collection_id)
    return int(session.execute(stmt).scalar_one())


# --- filters -----------------------------------------------------------------


def filter_clause(node: FilterNode) -> ColumnElement[bool]:
    """SQL for a metadata filter on DocumentRow, with the semantics of Chroma's
    `where`: NE and NIN also match documents without the key, range operators
    only match numbers, ints and doubles compare as numbers."""
    if isinstance(node, AllOf):
        return and_(*(filter_clause(child) for child in node.filters))
    if isinstance(node, AnyOf):
        return or_(*(filter_clause(child) for child in node.filters))
    return _condition_clause(node)


_POSITIVE = {Op.NE: Op.EQ, Op.NIN: Op.IN}


def _condition_clause(cond: Condition) -> ColumnElement[bool]:
    negated = cond.op in _POSITIVE
    op = _POSITIVE.get(cond.op, cond.op)
    match = exists().where(
        MetadataRow.document_id == DocumentRow.id,
        MetadataRow.key == cond.key,
        _value_match(op, cond.values),
    )
    return not_(match) if negated else match


def _value_match(op: Op, values: Sequence[MetadataScalar]) -> ColumnElement[bool]:
    kind = value_kind(values[0])
    if kind in ("bool", "string"):
        column: Any = MetadataRow.bool_value if kind == "bool" else MetadataRow.string_value
        match: ColumnElement[bool] = column.in_(values) if op is Op.IN else column == values[0]
        return match
    # Numbers live in int_value or float_value; compare against both, binding
    # the operand with its own type so no backend truncates 2.5 to 2.
    if op is Op.IN:
        # A whole double (2.0) also matches the int 2; one outside int64 cannot.
        numbers = [float(v) for v in values]  # the kind check made them all numbers
        ints = [
            int(v)  # ints stay exact; a whole double becomes the int it equals
            for v in values
            if isinstance(v, int) or (float(v).is_integer() and _INT64_MIN <= float(v) < 2**63)
        ]
        return or_(
            MetadataRow.int_value.in_(ints) if ints else literal(False),
            MetadataRow.float_value.in_(numbers),
        )
    operand = literal(values[0], Double() if isinstance(values[0], float) else BigInteger())
    compare = _COMPARE[op]
    return or_(compare(MetadataRow.int_value, operand), compare(MetadataRow.float_value, operand))


_INT64_MIN = -(2**63)

_COMPARE: dict[Op, Callable[[Any, Any], ColumnElement[bool]]] = {
    Op.EQ: operator.eq,
    Op.GT: operator.gt,
    Op.GTE: operator.ge,
    Op.LT: operator.lt,
    Op.LTE: operator.le,
}
