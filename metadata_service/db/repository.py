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
    case,
    delete,
    exists,
    func,
    insert,
    literal,
    not_,
    or_,
    select,
    text,
    true,
    tuple_,
    update,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, aliased, defer, selectinload
from sqlalchemy.sql.expression import column, table
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import Integer, String

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
    VectorDeletionRow,
)
from metadata_service.domain import ChunkingSpec

# Bulk inserts go through Core tables: the ORM's bulk path splits rows whose
# NULL columns differ (every typed metadata row does) into one statement each.
_COLLECTIONS = cast(Table, CollectionRow.__table__)
_DOCUMENTS = cast(Table, DocumentRow.__table__)
_CHUNKS = cast(Table, ChunkRow.__table__)
_METADATA = cast(Table, MetadataRow.__table__)
_DELETIONS = cast(Table, VectorDeletionRow.__table__)

# The outbox index (ix_chunks_outbox) holds the chunks not INDEXED yet, so
# finding work stays cheap however many chunks are done. A planner uses a
# partial index only when the query states its condition: SQLite cannot tell
# that state = 'PENDING' implies it (and scanned every chunk per batch: ingest
# slowed down as the table grew), nor can PostgreSQL's generic plans with the
# state as a bound parameter. Every outbox query repeats it, as this literal.
_IN_OUTBOX = text("chunks.state != 'INDEXED'")

# --- collections -------------------------------------------------------------


def get_collection(session: Session, name: str) -> CollectionRow | None:
    return session.scalars(select(CollectionRow).where(CollectionRow.name == name)).one_or_none()


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

    @property
    def chunking(self) -> ChunkingSpec:
        return ChunkingSpec(self.chunk_size, self.chunk_overlap)


def collection_handle(session: Session, name: str) -> CollectionHandle | None:
    """Every upsert looks its collection up twice: as a Core row this costs a
    fifth of loading the ORM entity."""
    c = _COLLECTIONS.c
    stmt = select(c.id, c.name, c.vector_collection, c.chunk_size, c.chunk_overlap).where(
        c.name == name
    )
    row = session.execute(stmt).one_or_none()
    return None if row is None else CollectionHandle(*row)


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


# The deployment's page token secret (catalog.Catalog._tokens): one row,
# made by migration 0004 or by the first reader that finds none.
_SECRETS = table("deployment_secrets", column("name", String), column("value", String))
_PAGE_TOKEN_SECRET = "page_token"


def page_token_secret(session: Session) -> str | None:
    stmt = select(_SECRETS.c.value).where(_SECRETS.c.name == _PAGE_TOKEN_SECRET)
    return session.execute(stmt).scalar_one_or_none()


def add_page_token_secret(session: Session, candidate: str) -> str:
    """Stores `candidate` unless another worker or replica stored one first;
    returns the one stored. ON CONFLICT raises nothing, so a transaction
    shared with other writers (SQLite group commit) is never spoilt."""
    session.execute(
        text(
            "INSERT INTO deployment_secrets (name, value) VALUES (:name, :value) "
            "ON CONFLICT (name) DO NOTHING"
        ),
        {"name": _PAGE_TOKEN_SECRET, "value": candidate},
    )
    stored = page_token_secret(session)
    assert stored is not None  # inserted just now, or there already
    return stored


def delete_documents(
    session: Session,
    collection_id: int,
    *,
    external_ids: Collection[str] | None = None,
    where: FilterNode | None = None,
    pks: Collection[int] | None = None,
) -> list[DeletedDocument]:
    """Deletes by ids, by filter or by primary keys (chunks and metadata
    cascade); returns what the vectors' deletion needs of each."""
    stmt = delete(DocumentRow).where(DocumentRow.collection_id == collection_id)
    if external_ids is not None:
        stmt = stmt.where(DocumentRow.external_id.in_(list(external_ids)))
    if where is not None:
        stmt = stmt.where(filter_clause(where))
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


# --- the indexing pipeline: chunk outbox and deletion outbox ----------------


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
) -> list[int]:
    """Records what the vector service said, for chunks still held under
    `lease` (a chunk rewritten meanwhile lost its lease and is left alone);
    returns the documents touched, whose state must be refreshed.
    `truncated`: indexed chunks the vector service embedded only in part."""
    held = and_(ChunkRow.lease_until == lease, ChunkRow.state == IndexState.PENDING)
    if truncated:  # before `indexed` releases the lease that marks them held
        session.execute(
            update(ChunkRow).where(held, ChunkRow.id.in_(list(truncated))).values(truncated=True)
        )
    if indexed:
        session.execute(
            update(ChunkRow)
            .where(held, ChunkRow.id.in_(list(indexed)))
            .values(state=IndexState.INDEXED, error=None, lease_until=None, updated_at=now)
        )
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


def refresh_document_states(session: Session, document_pks: Collection[int], now: datetime) -> None:
    """A document is FAILED if any chunk is, PENDING if any chunk waits,
    INDEXED when every chunk has its vector."""
    if not document_pks:
        return
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


def document_states(
    session: Session, document_pks: Collection[int]
) -> dict[int, tuple[IndexState, str | None]]:
    stmt = select(DocumentRow.id, DocumentRow.state, DocumentRow.error).where(
        DocumentRow.id.in_(list(document_pks))
    )
    return {pk: (IndexState(state), error) for pk, state, error in session.execute(stmt)}


def truncated_chunks_of(session: Session, document_pks: Collection[int]) -> dict[int, int]:
    """How many chunks of each document were truncated (absent: none)."""
    stmt = (
        select(ChunkRow.document_id, func.count())
        .where(ChunkRow.truncated == true(), ChunkRow.document_id.in_(list(document_pks)))
        .group_by(ChunkRow.document_id)
    )
    return {int(pk): int(count) for pk, count in session.execute(stmt)}


def truncated_chunk_total(session: Session, collection_id: int | None) -> int:
    """Chunks the vector service embedded only in part (the partial index
    ix_chunks_truncated holds just those)."""
    stmt = select(func.count()).select_from(ChunkRow).where(ChunkRow.truncated == true())
    if collection_id is not None:
        stmt = stmt.join(DocumentRow, DocumentRow.id == ChunkRow.document_id).where(
            DocumentRow.collection_id == collection_id
        )
    return int(session.execute(stmt).scalar_one())


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


def pending_deletions(session: Session) -> int:
    return int(session.execute(select(func.count()).select_from(VectorDeletionRow)).scalar_one())


# --- search and reconcile ----------------------------------------------------


@dataclass(frozen=True)
class LiveChunk:
    chunk_id: int
    document_pk: int
    text: str
    incarnation: int
    generation: int
    content_hash: str
    state: IndexState


def live_chunks(
    session: Session,
    collection_id: int,
    keys: Collection[tuple[str, int]],
    where: FilterNode | None = None,
    *,
    with_metadata: bool = False,
) -> dict[tuple[str, int], tuple[LiveChunk, dict[str, MetadataScalar]]]:
    """The chunks at these (document id, ordinal) places that exist and whose
    documents match `where` as stored now; with each, its document's
    metadata when asked (Search's join: one query, the metadata rows
    outer-joined, one row per key), else an empty dict (Reconcile)."""
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
    found: dict[tuple[str, int], tuple[LiveChunk, dict[str, MetadataScalar]]] = {}
    for row in session.execute(stmt):
        values: tuple[Any, ...] = tuple(row)  # 9 columns, then the metadata entry if joined
        key = (values[0], values[1])
        if key not in found:
            chunk_id, document_pk, text, incarnation, generation, content_hash = values[2:8]
            found[key] = (
                LiveChunk(
                    chunk_id,
                    document_pk,
                    text,
                    incarnation,
                    generation,
                    content_hash,
                    IndexState(values[8]),
                ),
                {},
            )
        entry = values[9] if with_metadata else None
        if entry is not None:
            found[key][1][entry.key] = metadata_value(entry)
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
