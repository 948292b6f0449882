"""Collection rows: create, find, list, delete, and the handle writes and the
pipeline address a collection by. Like every module of `db/`, functions take
the caller's session and never commit: transactions belong to the service
layer (`catalog.py`, `outbox.py`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from sqlalchemy import (
    Table,
    delete,
    select,
)
from sqlalchemy.orm import Session

from metadata_service.db.models import (
    CollectionRow,
)
from metadata_service.domain import ChunkingSpec, ChunkUnit

_COLLECTIONS = cast(Table, CollectionRow.__table__)


def get_collection(session: Session, name: str, *, lock: bool = False) -> CollectionRow | None:
    """`lock`: FOR UPDATE (PostgreSQL), for a delete: it waits for the writes
    holding the row (see collection_handle) so what it counts and removes
    includes theirs, and of two deletes at once the second finds nothing."""
    stmt = select(CollectionRow).where(CollectionRow.name == name)
    if lock:
        stmt = stmt.with_for_update()
    return session.scalars(stmt).one_or_none()


@dataclass(frozen=True)
class CollectionHandle:
    """A collection as writes, searches and the indexing pipeline address it.
    `vector_collection` is unique per creation, so comparing handles tells a
    collection from one deleted and created again under its name (even with
    the same row id, which SQLite may reuse)."""

    id: int
    name: str
    vector_collection: str
    chunk_size: int
    chunk_overlap: int
    chunk_unit: str = ChunkUnit.CHARACTERS
    # The collection's embedding model: a TOKENS collection chunks with its tokenizer.
    model: str = ""

    @property
    def chunking(self) -> ChunkingSpec:
        return ChunkingSpec(self.chunk_size, self.chunk_overlap, ChunkUnit(self.chunk_unit))


def collection_handle(
    session: Session, name: str, *, lock: bool = False
) -> CollectionHandle | None:
    """Every upsert looks its collection up twice: as a Core row this costs a
    fifth of loading the ORM entity.

    `lock`: for a write that adds rows to the collection. On PostgreSQL the
    row is then held FOR KEY SHARE until the transaction ends: a concurrent
    DeleteCollection (another worker, another replica) waits for the write
    and its cascade takes the new documents too, or it committed first and
    the collection is not found here. Without it, under READ COMMITTED the
    delete could commit between this read and the insert of the documents,
    which then failed on the foreign key (an INTERNAL error). Writers don't
    block each other (KEY SHARE locks are shared). SQLite's writers are
    serialised already; it has no row locks."""
    c = _COLLECTIONS.c
    stmt = select(
        c.id,
        c.name,
        c.vector_collection,
        c.chunk_size,
        c.chunk_overlap,
        c.chunk_unit,
        c.embedding_model,
    ).where(c.name == name)
    if lock:
        stmt = stmt.with_for_update(key_share=True)
    row = session.execute(stmt).one_or_none()
    return None if row is None else CollectionHandle(*row)


def vector_collection_in_use(session: Session, vector_collection: str) -> bool:
    """Whether a collection still stores its vectors in `vector_collection`
    (a handful of collections: no index needed)."""
    stmt = select(CollectionRow.id).where(CollectionRow.vector_collection == vector_collection)
    return session.execute(stmt.limit(1)).first() is not None


def add_collection(session: Session, row: CollectionRow) -> CollectionRow:
    session.add(row)
    session.flush()
    return row


def list_collections(session: Session, after: str | None, limit: int) -> Sequence[CollectionRow]:
    stmt = select(CollectionRow).order_by(CollectionRow.name).limit(limit)
    if after is not None:
        stmt = stmt.where(CollectionRow.name > after)
    return session.scalars(stmt).all()


def delete_collection(session: Session, collection_id: int) -> None:
    # Documents, chunks and metadata go through ON DELETE CASCADE.
    session.execute(delete(CollectionRow).where(CollectionRow.id == collection_id))
