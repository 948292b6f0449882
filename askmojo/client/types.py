"""What the SDK takes and gives back: plain, frozen dataclasses (no protos).

Metadata is a plain `dict[str, str | int | float | bool]` everywhere.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeAlias

import grpc

from askmojo.client.errors import AskmojoError, Violation
from askmojo.common.filters import MetadataScalar

#: A metadata value: bool, int (64-bit), float (finite) or str.
Scalar: TypeAlias = MetadataScalar
#: A document's or record's metadata.
Metadata: TypeAlias = dict[str, MetadataScalar]


@dataclass(frozen=True)
class Document:
    """A document to store: `id` chosen by you (any string up to 512 bytes),
    its `text`, and `metadata` the filters can match."""

    id: str
    text: str
    metadata: Mapping[str, Scalar] = field(default_factory=dict)


#: Anywhere a document goes in, a `Document` or a dict with the keys `id`,
#: `text` and optionally `metadata` will do.
DocumentLike: TypeAlias = Document | Mapping[str, Any]


class UpsertState(enum.StrEnum):
    """What happened to one document of an upsert or ingest."""

    #: Stored; its chunks wait for the vector service.
    PENDING = "pending"
    #: Stored, and every chunk has a vector.
    INDEXED = "indexed"
    #: Same text and metadata as stored: nothing was written or re-embedded.
    UNCHANGED = "unchanged"
    #: Not stored, or stored but indexing failed: see `error`.
    FAILED = "failed"


class DocumentState(enum.StrEnum):
    """The indexing state of a stored document (the worst of its chunks)."""

    PENDING = "pending"
    INDEXED = "indexed"
    FAILED = "failed"
    UNSPECIFIED = "unspecified"


@dataclass(frozen=True)
class UpsertResult:
    """The outcome of one document. `ok` unless `state` is FAILED; then
    `error` (an `AskmojoError`, e.g. `InvalidArgument` with violations) says
    why."""

    id: str
    state: UpsertState
    error: AskmojoError | None = None
    chunk_count: int = 0
    generation: int = 0
    #: Chunks longer than the model's window, embedded only in part.
    truncated_chunks: int = 0

    @property
    def ok(self) -> bool:
        """True unless the document failed."""
        return self.error is None and self.state is not UpsertState.FAILED

    @property
    def code(self) -> grpc.StatusCode:
        """OK, or the failure's status code."""
        return grpc.StatusCode.OK if self.error is None else self.error.code

    @property
    def message(self) -> str:
        """Empty, or why the document failed."""
        return "" if self.error is None else self.error.message

    @property
    def violations(self) -> tuple[Violation, ...]:
        """The bad fields of a refused document."""
        return () if self.error is None else self.error.violations


@dataclass(frozen=True)
class StoredDocument:
    """A document as the service keeps it. `text` is None when the read asked
    for no text (`list(..., include_text=False)`)."""

    id: str
    text: str | None
    metadata: Metadata
    state: DocumentState
    content_hash: str
    generation: int
    chunk_count: int
    #: Why indexing failed, when `state` is FAILED.
    error: str
    create_time: datetime | None
    update_time: datetime | None


@dataclass(frozen=True)
class Collection:
    """A collection: its embedding model and dimension and its chunking are
    fixed at creation."""

    name: str
    description: str
    model: str
    dimension: int
    document_count: int
    chunk_count: int
    chunk_size: int
    chunk_overlap: int
    create_time: datetime | None
    #: The vector service collection holding its vectors.
    vector_collection: str
    #: What chunk_size and chunk_overlap count: "tokens" (of the model's own
    #: tokenizer) or "characters".
    chunk_unit: str = "characters"


@dataclass(frozen=True)
class CollectionDeleted:
    """What deleting a collection removed."""

    deleted_documents: int
    deleted_chunks: int


@dataclass(frozen=True)
class DeleteResult:
    """What a delete removed; `not_found_ids` are requested ids that did not
    exist (a delete by filter has none)."""

    deleted_count: int
    not_found_ids: list[str]


class SearchMode(enum.StrEnum):
    """`search(mode=...)`: which retrievers answer."""

    # Keyword index and dense vectors fused by reciprocal rank (the default).
    HYBRID = "hybrid"
    # Dense vectors alone (needs the vector service).
    DENSE = "dense"
    # The keyword index alone (never needs the vector service).
    KEYWORD = "keyword"


@dataclass(frozen=True)
class SearchHit:
    """One matching chunk: `score` is higher for better matches (HYBRID: the
    fused reciprocal-rank score; DENSE: the similarity; KEYWORD: the keyword
    score), `text` the chunk's text, `metadata` its document's. Each
    retriever's rank (1 = best; 0 = it did not return this chunk) and score
    come with it."""

    document_id: str
    chunk_id: str
    score: float
    text: str
    metadata: Metadata
    dense_rank: int = 0
    dense_score: float = 0.0
    keyword_rank: int = 0
    keyword_score: float = 0.0


class SearchResults(list[SearchHit]):
    """`search()`: the hits, best first (a list), and whether HYBRID had to
    answer from the keyword index alone (`degraded`, with the reason) because
    the vector service was unavailable."""

    def __init__(
        self, hits: Iterable[SearchHit] = (), *, degraded: bool = False, degraded_reason: str = ""
    ) -> None:
        super().__init__(hits)
        self.degraded = degraded
        self.degraded_reason = degraded_reason


@dataclass(frozen=True)
class ReconcileReport:
    """Drift found (and repaired unless `dry_run`) between the database and
    the vector index."""

    missing_vectors: int
    orphan_vectors: int
    stale_vectors: int
    pending_resumed: int
    dry_run: bool
    # Vectors of INDEXED chunks with no record (the vector service's text
    # hash) of the text they were embedded from: written before it kept one,
    # or upserted as raw vectors behind the metadata service. Re-embedded
    # unless `dry_run`.
    unverified_vectors: int = 0


@dataclass(frozen=True)
class PoolStats:
    """The SQLAlchemy pool of the worker process that answered."""

    pool_class: str
    size: int
    checked_out: int
    checked_in: int
    overflow: int
    max_overflow: int


@dataclass(frozen=True)
class DatabaseStats:
    """The database behind the metadata service."""

    dialect: str
    database_bytes: int
    wal_bytes: int
    journal_mode: str
    write_transactions: int
    writes: int


@dataclass(frozen=True)
class Stats:
    """`stats()`: documents by state, chunks, database and pool."""

    documents_by_state: dict[str, int]
    chunk_count: int
    truncated_chunk_count: int
    database: DatabaseStats
    pool: PoolStats
    worker_pid: int
    # Bytes of the keyword index (SQLite FTS5 tables; PostgreSQL GIN index).
    keyword_index_bytes: int = 0

    @property
    def document_count(self) -> int:
        """Documents in any state."""
        return sum(self.documents_by_state.values())


# --- the vector service ---------------------------------------------------------


@dataclass(frozen=True)
class VectorRecord:
    """A record to upsert into a vector collection: give `text` (embedded by
    the service) or `vector` (used as is), not both."""

    id: str
    text: str | None = None
    vector: list[float] | None = None
    metadata: Mapping[str, Scalar] = field(default_factory=dict)


#: A `VectorRecord` or a dict with its fields.
RecordLike: TypeAlias = VectorRecord | Mapping[str, Any]


@dataclass(frozen=True)
class RecordResult:
    """The outcome of one record of a vector upsert."""

    id: str
    error: AskmojoError | None = None
    #: The text was longer than the model's window: only its start was embedded.
    truncated: bool = False

    @property
    def ok(self) -> bool:
        """True unless the record failed."""
        return self.error is None


@dataclass(frozen=True)
class Match:
    """A nearest neighbour: `score` is a similarity (higher is better)."""

    id: str
    score: float
    metadata: Metadata


@dataclass(frozen=True)
class StoredRecord:
    """A record read back; `vector` is None unless asked for."""

    id: str
    metadata: Metadata
    vector: list[float] | None


@dataclass(frozen=True)
class VectorCollectionInfo:
    """A vector collection as `ensure_collection` found or made it."""

    name: str
    dimension: int
    model: str
    created: bool


@dataclass(frozen=True)
class ModelInfo:
    """The embedding model and the vector service's limits."""

    model: str
    dimension: int
    max_sequence_length: int
    max_texts_per_call: int
    max_text_length: int
    max_message_bytes: int
    workers: int
    max_records_per_call: int
    max_ids_per_call: int
