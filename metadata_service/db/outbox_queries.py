"""The outbox's queries (`outbox.py` runs them): chunks claimed, settled,
released and re-queued under leases, the documents' states that follow from
their chunks, and the deletion outbox. Functions take the caller's session
and never commit."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Table,
    and_,
    case,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.orm import Session

from metadata_service.db.document_queries import metadata_value
from metadata_service.db.models import (
    ChunkRow,
    CollectionRow,
    DocumentRow,
    MetadataRow,
    VectorDeletionRow,
)
from metadata_service.domain import IndexState

_DELETIONS = cast(Table, VectorDeletionRow.__table__)


# The outbox index (ix_chunks_outbox) holds the chunks not INDEXED yet, so
# finding work stays cheap however many chunks are done. A planner uses a
# partial index only when the query states its condition: SQLite cannot tell
# that state = 'PENDING' implies it (and scanned every chunk per batch: ingest
# slowed down as the table grew), nor can PostgreSQL's generic plans with the
# state as a bound parameter. Every outbox query repeats it, as this literal.
_IN_OUTBOX = text("chunks.state != 'INDEXED'")


@dataclass(frozen=True)
class ClaimedChunk:
    """A chunk an indexer holds the lease of, with what its vector needs."""

    chunk_id: int
    ordinal: int
    text: str
    document_pk: int
    document_id: str
    incarnation: int
    generation: int
    content_hash: str
    vector_collection: str
    model: str
    dimension: int


def claim_chunks(
    session: Session,
    *,
    now: datetime,
    lease_until: datetime,
    limit: int,
    collection_id: int | None = None,
) -> list[int]:
    """Leases up to `limit` PENDING chunks nobody holds (or whose holder's
    lease ran out: it crashed), oldest first; returns their ids."""
    stmt = (
        select(ChunkRow.id)
        .where(
            _IN_OUTBOX,
            ChunkRow.state == IndexState.PENDING,
            or_(ChunkRow.lease_until.is_(None), ChunkRow.lease_until < now),
        )
        .order_by(ChunkRow.id)
        .limit(limit)
    )
    if collection_id is not None:
        stmt = stmt.join(DocumentRow, DocumentRow.id == ChunkRow.document_id).where(
            DocumentRow.collection_id == collection_id
        )
    ids = list(session.scalars(stmt.with_for_update(skip_locked=True, of=ChunkRow)))
    if ids:
        session.execute(
            update(ChunkRow).where(ChunkRow.id.in_(ids)).values(lease_until=lease_until)
        )
    return ids


def release_lease(session: Session, lease: datetime) -> None:
    """The PENDING chunks still held under `lease`, unleased."""
    session.execute(
        update(ChunkRow)
        .where(_IN_OUTBOX, ChunkRow.lease_until == lease, ChunkRow.state == IndexState.PENDING)
        .values(lease_until=None)
    )


def chunks_held_by_others(session: Session, *, now: datetime, collection_id: int) -> int:
    """PENDING chunks of a collection under a live lease: being sent right
    now by some indexer (the background loop, another call)."""
    stmt = (
        select(func.count())
        .select_from(ChunkRow)
        .join(DocumentRow, DocumentRow.id == ChunkRow.document_id)
        .where(
            DocumentRow.collection_id == collection_id,
            _IN_OUTBOX,
            ChunkRow.state == IndexState.PENDING,
            ChunkRow.lease_until >= now,
        )
    )
    return int(session.scalar(stmt) or 0)


def claimed_chunks(session: Session, lease: datetime) -> list[ClaimedChunk]:
    """The chunks held under this lease, with their documents and collections."""
    stmt = (
        select(
            ChunkRow.id,
            ChunkRow.ordinal,
            ChunkRow.text,
            DocumentRow.id,
            DocumentRow.external_id,
            DocumentRow.incarnation,
            DocumentRow.generation,
            DocumentRow.content_hash,
            CollectionRow.vector_collection,
            CollectionRow.embedding_model,
            CollectionRow.embedding_dimension,
        )
        .join(DocumentRow, DocumentRow.id == ChunkRow.document_id)
        .join(CollectionRow, CollectionRow.id == DocumentRow.collection_id)
        .where(_IN_OUTBOX, ChunkRow.lease_until == lease, ChunkRow.state == IndexState.PENDING)
        .order_by(ChunkRow.id)
    )
    return [ClaimedChunk(*row) for row in session.execute(stmt)]


def metadata_of(session: Session, document_pks: Collection[int]) -> dict[int, dict[str, Any]]:
    rows = session.scalars(
        select(MetadataRow).where(MetadataRow.document_id.in_(list(document_pks)))
    )
    result: dict[int, dict[str, Any]] = {pk: {} for pk in document_pks}
    for row in rows:
        result[row.document_id][row.key] = metadata_value(row)
    return result


def settle_chunks(
    session: Session,
    lease: datetime,
    *,
    indexed: Collection[int],
    failed: Mapping[int, str],
    released: Collection[int],
    now: datetime,
    truncated: Collection[int] = (),
    superseded: set[int] | None = None,
) -> list[int]:
    """Records what the vector service said, for chunks still held under
    `lease` (a chunk rewritten meanwhile lost its lease and is left alone);
    returns the documents touched, whose state must be refreshed.
    `truncated`: indexed chunks the vector service embedded only in part.
    `superseded`, when given, receives the `indexed` chunks no longer held:
    their vectors were written all the same (see Outbox.settle_chunks)."""
    held = and_(ChunkRow.lease_until == lease, ChunkRow.state == IndexState.PENDING)
    # Only ever raised here: a chunk re-sent as its stored vector (a
    # metadata-only change) is not re-measured, and a collection's model is
    # fixed, so the same text is cut the same way; new text resets the flag.
    if truncated:  # before `indexed` releases the lease that marks them held
        session.execute(
            update(ChunkRow).where(held, ChunkRow.id.in_(list(truncated))).values(truncated=True)
        )
    if indexed:
        settled = session.scalars(
            update(ChunkRow)
            .where(held, ChunkRow.id.in_(list(indexed)))
            .values(state=IndexState.INDEXED, error=None, lease_until=None, updated_at=now)
            .returning(ChunkRow.id)
            .execution_options(synchronize_session=False)
        ).all()
        if superseded is not None:
            superseded.update(set(indexed) - set(settled))
    for chunk_id, error in failed.items():
        session.execute(
            update(ChunkRow)
            .where(held, ChunkRow.id == chunk_id)
            .values(
                state=IndexState.FAILED,
                error=error[:2000],
                attempts=ChunkRow.attempts + 1,
                lease_until=None,
                updated_at=now,
            )
        )
    if released:
        session.execute(
            update(ChunkRow)
            .where(held, ChunkRow.id.in_(list(released)))
            .values(lease_until=None, attempts=ChunkRow.attempts + 1)
        )
    ids = [*indexed, *failed, *released]
    return list(
        session.scalars(select(ChunkRow.document_id).where(ChunkRow.id.in_(ids)).distinct())
    )


def current_documents(session: Session, document_pks: Collection[int]) -> dict[int, int]:
    """The incarnation of each of these documents that still exists."""
    stmt = select(DocumentRow.id, DocumentRow.incarnation).where(
        DocumentRow.id.in_(list(document_pks))
    )
    return {int(pk): int(incarnation) for pk, incarnation in session.execute(stmt)}


def chunk_counts(session: Session, document_pks: Collection[int]) -> dict[int, int]:
    stmt = (
        select(ChunkRow.document_id, func.count())
        .where(ChunkRow.document_id.in_(list(document_pks)))
        .group_by(ChunkRow.document_id)
    )
    return {int(pk): int(count) for pk, count in session.execute(stmt)}


def requeue_documents(session: Session, document_pks: Collection[int], now: datetime) -> None:
    """Every chunk of these documents PENDING and unleased: sent again by
    whichever indexer claims them next."""
    if document_pks:
        session.execute(
            update(ChunkRow)
            .where(ChunkRow.document_id.in_(list(document_pks)))
            .values(state=IndexState.PENDING, error=None, lease_until=None, updated_at=now)
            .execution_options(synchronize_session=False)
        )


def lock_documents(session: Session, document_pks: Collection[int]) -> None:
    """PostgreSQL: row locks on these documents, taken in the order writers
    take them (`document_queries.find_documents`: by collection, then
    external id), so the two never deadlock on each other's order. SQLite:
    nothing (its write lock serializes every writer already).

    Why a state refresh needs it: under READ COMMITTED, two transactions
    settling different chunks of one document (two indexers, two replicas)
    would each compute the document's state from a snapshot without the
    other's uncommitted chunks, and the last to write (its UPDATE waits for
    the first, then keeps its old snapshot) could leave the document
    PENDING with every chunk INDEXED, for good. Locked first, the second
    waits here, and its refresh, a later statement, sees the first's
    commit."""
    if not document_pks or session.get_bind().dialect.name == "sqlite":
        return
    session.execute(
        select(DocumentRow.id)
        .where(DocumentRow.id.in_(list(document_pks)))
        .order_by(DocumentRow.collection_id, DocumentRow.external_id)
        .with_for_update()
    )


def refresh_document_states(
    session: Session, document_pks: Collection[int], now: datetime, *, locked: bool = False
) -> None:
    """A document is FAILED if any chunk is, PENDING if any chunk waits,
    INDEXED when every chunk has its vector. Takes the documents' row locks
    first (see `lock_documents`) unless the caller's transaction holds them
    already (`locked`)."""
    if not document_pks:
        return
    if not locked:
        lock_documents(session, document_pks)
    failed = exists().where(
        ChunkRow.document_id == DocumentRow.id, ChunkRow.state == IndexState.FAILED
    )
    pending = exists().where(
        ChunkRow.document_id == DocumentRow.id, ChunkRow.state == IndexState.PENDING
    )
    first_error = (
        select(ChunkRow.error)
        .where(ChunkRow.document_id == DocumentRow.id, ChunkRow.state == IndexState.FAILED)
        .order_by(ChunkRow.ordinal)
        .limit(1)
        .scalar_subquery()
    )
    session.execute(
        update(DocumentRow)
        .where(DocumentRow.id.in_(list(document_pks)))
        .values(
            state=case(
                (failed, literal(IndexState.FAILED.value)),
                (pending, literal(IndexState.PENDING.value)),
                else_=literal(IndexState.INDEXED.value),
            ),
            error=first_error,
        ),
        execution_options={"synchronize_session": False},
    )


@dataclass(frozen=True)
class DocumentState:
    state: IndexState
    error: str | None


def document_states(session: Session, document_pks: Collection[int]) -> dict[int, DocumentState]:
    stmt = select(DocumentRow.id, DocumentRow.state, DocumentRow.error).where(
        DocumentRow.id.in_(list(document_pks))
    )
    return {
        pk: DocumentState(IndexState(state), error) for pk, state, error in session.execute(stmt)
    }


def truncated_chunks_of(session: Session, document_pks: Collection[int]) -> dict[int, int]:
    """How many chunks of each document were truncated (absent: none)."""
    stmt = (
        select(ChunkRow.document_id, func.count())
        .where(ChunkRow.truncated == true(), ChunkRow.document_id.in_(list(document_pks)))
        .group_by(ChunkRow.document_id)
    )
    return {int(pk): int(count) for pk, count in session.execute(stmt)}


def add_deletions(session: Session, rows: Sequence[Mapping[str, Any]]) -> None:
    if rows:
        session.execute(insert(_DELETIONS), list(rows))


def claim_deletions(
    session: Session, *, now: datetime, lease_until: datetime, limit: int
) -> list[VectorDeletionRow]:
    stmt = (
        select(VectorDeletionRow)
        .where(or_(VectorDeletionRow.lease_until.is_(None), VectorDeletionRow.lease_until < now))
        .order_by(VectorDeletionRow.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = list(session.scalars(stmt))
    for row in rows:
        row.lease_until = lease_until
    session.flush()
    for row in rows:
        session.expunge(row)
    return rows


def leased_deletions(session: Session, lease: datetime) -> list[VectorDeletionRow]:
    rows = list(
        session.scalars(
            select(VectorDeletionRow)
            .where(VectorDeletionRow.lease_until == lease)
            .order_by(VectorDeletionRow.id)
        )
    )
    for row in rows:
        session.expunge(row)
    return rows


def finish_deletions(session: Session, ids: Collection[int]) -> None:
    if ids:
        session.execute(delete(VectorDeletionRow).where(VectorDeletionRow.id.in_(list(ids))))


def release_deletions(session: Session, ids: Collection[int], error: str) -> None:
    if ids:
        session.execute(
            update(VectorDeletionRow)
            .where(VectorDeletionRow.id.in_(list(ids)))
            .values(lease_until=None, attempts=VectorDeletionRow.attempts + 1, error=error[:2000])
        )


def requeue_chunks(session: Session, chunk_ids: Collection[int], now: datetime) -> list[int]:
    """Back to PENDING (and unleased); returns their documents."""
    if not chunk_ids:
        return []
    session.execute(
        update(ChunkRow)
        .where(ChunkRow.id.in_(list(chunk_ids)))
        .values(state=IndexState.PENDING, error=None, lease_until=None, updated_at=now)
    )
    return list(
        session.scalars(
            select(ChunkRow.document_id).where(ChunkRow.id.in_(list(chunk_ids))).distinct()
        )
    )


def chunks_at_removed_places(session: Session, rows: Sequence[VectorDeletionRow]) -> list[int]:
    """The chunks not FAILED, of the documents now holding the ids these
    removals of a document's vectors named (in their collections, from
    their first ordinals): the places whose vectors they may have taken."""
    named: dict[tuple[str, int], set[str]] = defaultdict(set)
    for row in rows:
        if row.document_id is not None:
            named[row.vector_collection, row.first_ordinal].add(row.document_id)
    chunk_ids: list[int] = []
    for (vector_collection, first_ordinal), external_ids in named.items():
        collection_id = session.scalar(
            select(CollectionRow.id).where(CollectionRow.vector_collection == vector_collection)
        )
        if collection_id is None:
            continue  # dropped: its vector collection goes too
        ids = sorted(external_ids)
        for start in range(0, len(ids), _IN_LIST):
            stmt = (
                select(ChunkRow.id)
                .join(DocumentRow, DocumentRow.id == ChunkRow.document_id)
                .where(
                    DocumentRow.collection_id == collection_id,
                    DocumentRow.external_id.in_(ids[start : start + _IN_LIST]),
                    ChunkRow.ordinal >= first_ordinal,
                    ChunkRow.state != IndexState.FAILED,
                )
            )
            chunk_ids.extend(session.scalars(stmt))
    return chunk_ids


# Values per IN list: far under every backend's bound-parameter limit.
_IN_LIST = 500


def unsettled_documents(session: Session, collection_id: int) -> list[int]:
    """The documents of a collection not recorded INDEXED."""
    stmt = select(DocumentRow.id).where(
        DocumentRow.collection_id == collection_id, DocumentRow.state != IndexState.INDEXED
    )
    return list(session.scalars(stmt))


def unfinished_chunks(session: Session, collection_id: int) -> list[int]:
    """PENDING and FAILED chunks of a collection."""
    stmt = (
        select(ChunkRow.id)
        .join(DocumentRow, DocumentRow.id == ChunkRow.document_id)
        .where(
            DocumentRow.collection_id == collection_id,
            _IN_OUTBOX,
            ChunkRow.state.in_([IndexState.PENDING, IndexState.FAILED]),
        )
    )
    return list(session.scalars(stmt))
