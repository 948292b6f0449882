"""Counts for GetCollection, ListCollections and GetStats. Functions take the
caller's session and never commit."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import (
    func,
    select,
    true,
)
from sqlalchemy.orm import Session

from metadata_service.db.models import ChunkRow, DocumentRow
from metadata_service.domain import IndexState


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


def truncated_chunk_total(session: Session, collection_id: int | None) -> int:
    """Chunks the vector service embedded only in part (the partial index
    ix_chunks_truncated holds just those)."""
    stmt = select(func.count()).select_from(ChunkRow).where(ChunkRow.truncated == true())
    if collection_id is not None:
        stmt = stmt.join(DocumentRow, DocumentRow.id == ChunkRow.document_id).where(
            DocumentRow.collection_id == collection_id
        )
    return int(session.execute(stmt).scalar_one())
