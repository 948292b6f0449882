"""The chunks Search and Reconcile compare vectors against: live chunks by
place (with their documents' metadata for Search's join), and the keyset scan
of INDEXED chunks. Functions take the caller's session and never commit."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    select,
    tuple_,
)
from sqlalchemy.orm import Session, aliased

from askmojo.common.filters import (
    FilterNode,
    MetadataScalar,
)
from metadata_service.db.document_queries import metadata_value
from metadata_service.db.filters_sql import filter_clause
from metadata_service.db.models import ChunkRow, DocumentRow, MetadataRow
from metadata_service.domain import IndexState


@dataclass(frozen=True)
class LiveChunk:
    chunk_id: int
    document_pk: int
    text: str
    incarnation: int
    generation: int
    content_hash: str
    state: IndexState
    # Its document's metadata, when asked for (Search's join).
    metadata: dict[str, MetadataScalar] = field(default_factory=dict)


def live_chunks(
    session: Session,
    collection_id: int,
    keys: Collection[tuple[str, int]],
    where: FilterNode | None = None,
    *,
    with_metadata: bool = False,
) -> dict[tuple[str, int], LiveChunk]:
    """The chunks at these (document id, ordinal) places that exist and whose
    documents match `where` as stored now; with each, its document's
    metadata when asked (Search's join: one query, the metadata rows
    outer-joined, one row per key), else none (Reconcile)."""
    if not keys:
        return {}
    # An alias: the filter's EXISTS subqueries on document_metadata must not
    # correlate to this join of the same table.
    entries = aliased(MetadataRow)
    stmt = (
        select(
            DocumentRow.external_id,
            ChunkRow.ordinal,
            ChunkRow.id,
            DocumentRow.id,
            ChunkRow.text,
            DocumentRow.incarnation,
            DocumentRow.generation,
            DocumentRow.content_hash,
            ChunkRow.state,
        )
        .join(DocumentRow, DocumentRow.id == ChunkRow.document_id)
        .where(
            DocumentRow.collection_id == collection_id,
            tuple_(DocumentRow.external_id, ChunkRow.ordinal).in_(list(keys)),
        )
    )
    if with_metadata:
        stmt = stmt.add_columns(entries).outerjoin(entries, entries.document_id == DocumentRow.id)
    if where is not None:
        stmt = stmt.where(filter_clause(where))
    found: dict[tuple[str, int], LiveChunk] = {}
    for row in session.execute(stmt):
        values: tuple[Any, ...] = tuple(row)  # 9 columns, then the metadata entry if joined
        key = (values[0], values[1])
        if key not in found:
            chunk_id, document_pk, text, incarnation, generation, content_hash = values[2:8]
            found[key] = LiveChunk(
                chunk_id,
                document_pk,
                text,
                incarnation,
                generation,
                content_hash,
                IndexState(values[8]),
            )
        entry = values[9] if with_metadata else None
        if entry is not None:
            found[key].metadata[entry.key] = metadata_value(entry)
    return found


@dataclass(frozen=True)
class IndexedChunk:
    chunk_id: int
    document_id: str
    ordinal: int


def indexed_chunks_after(
    session: Session, collection_id: int, after: int, limit: int
) -> list[IndexedChunk]:
    """INDEXED chunks of a collection in id order after `after`: reconcile's
    keyset scan."""
    stmt = (
        select(ChunkRow.id, DocumentRow.external_id, ChunkRow.ordinal)
        .join(DocumentRow, DocumentRow.id == ChunkRow.document_id)
        .where(
            DocumentRow.collection_id == collection_id,
            ChunkRow.state == IndexState.INDEXED,
            ChunkRow.id > after,
        )
        .order_by(ChunkRow.id)
        .limit(limit)
    )
    return [IndexedChunk(int(a), str(b), int(c)) for a, b, c in session.execute(stmt)]
