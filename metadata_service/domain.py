"""Plain data passed between the servicer, the catalog, the pipeline and the
database layer.

No gRPC and no SQLAlchemy here: `convert.py` maps these to and from protos,
the query modules of `db/` to and from rows (`db/` imports this module,
never the other way round).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, TypeVar

from askmojo.common.filters import FilterNode, MetadataScalar

T = TypeVar("T")


class IndexState(enum.StrEnum):
    """Indexing state of a chunk (the outbox) and, as the worst of its
    chunks, of a document."""

    PENDING = "PENDING"
    INDEXED = "INDEXED"
    FAILED = "FAILED"


@dataclass(frozen=True)
class PoolStatus:
    pool_class: str
    size: int
    checked_out: int
    checked_in: int
    overflow: int
    max_overflow: int


@dataclass(frozen=True)
class StorageStatus:
    dialect: str
    database_bytes: int
    wal_bytes: int
    journal_mode: str
    write_transactions: int = 0
    writes: int = 0


class ChunkUnit(enum.StrEnum):
    """What a collection's chunk_size and chunk_overlap count (stored as is)."""

    CHARACTERS = "CHARACTERS"
    TOKENS = "TOKENS"


@dataclass(frozen=True)
class ChunkingSpec:
    chunk_size: int
    chunk_overlap: int
    unit: ChunkUnit = ChunkUnit.CHARACTERS


@dataclass(frozen=True)
class CollectionSpec:
    """A CreateCollection request; zero/empty fields take server defaults."""

    name: str
    description: str = ""
    model: str = ""
    dimension: int = 0
    chunk_size: int = 0
    chunk_overlap: int = 0
    # None: the server's default unit.
    chunk_unit: ChunkUnit | None = None


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    description: str
    model: str
    dimension: int
    chunking: ChunkingSpec
    document_count: int
    chunk_count: int
    created_at: datetime
    vector_collection: str = ""


@dataclass(frozen=True)
class DocumentInput:
    """A document as the client sent it. Metadata values are None where the
    client set no kind; validation rejects those."""

    id: str
    text: str
    metadata: Mapping[str, MetadataScalar | None]


@dataclass(frozen=True)
class DocumentInfo:
    id: str
    text: str | None  # None unless the full view was asked for
    metadata: Mapping[str, MetadataScalar]
    state: IndexState
    content_hash: str
    generation: int
    chunk_count: int
    error: str | None
    created_at: datetime
    updated_at: datetime


class UpsertState(enum.Enum):
    PENDING = "PENDING"
    INDEXED = "INDEXED"
    UNCHANGED = "UNCHANGED"
    FAILED = "FAILED"


@dataclass(frozen=True)
class UpsertOutcome:
    id: str
    state: UpsertState
    # None when the document was accepted; the reason otherwise.
    error: Exception | None = None
    chunk_count: int = 0
    generation: int = 0
    # Chunks the vector service embedded only in part (longer than the
    # model's window); known once the document is indexed.
    truncated_chunks: int = 0


@dataclass(frozen=True)
class DocumentQuery:
    collection: str
    filter: FilterNode | None = None
    states: frozenset[IndexState] = frozenset()
    page_size: int = 0
    page_token: str = ""
    include_text: bool = False


@dataclass(frozen=True)
class Page(Generic[T]):
    items: Sequence[T]
    next_page_token: str = ""


@dataclass(frozen=True)
class DeleteDocumentsOutcome:
    deleted_count: int
    not_found_ids: Sequence[str] = ()


@dataclass(frozen=True)
class DeleteCollectionOutcome:
    deleted_documents: int
    deleted_chunks: int


@dataclass(frozen=True)
class Stats:
    pool: PoolStatus
    storage: StorageStatus
    documents_by_state: Mapping[IndexState, int] = field(default_factory=dict)
    chunk_count: int = 0
    worker_pid: int = 0
    truncated_chunk_count: int = 0
    keyword_index_bytes: int = 0


class SearchMode(enum.Enum):
    """Which retrievers a Search uses."""

    HYBRID = "hybrid"
    DENSE = "dense"
    KEYWORD = "keyword"


@dataclass(frozen=True)
class SearchOptions:
    mode: SearchMode = SearchMode.HYBRID
    # HYBRID: each retriever's weight in the reciprocal rank fusion.
    dense_weight: float = 1.0
    keyword_weight: float = 1.0


@dataclass(frozen=True)
class SearchHit:
    document_id: str
    chunk_id: str
    # HYBRID: the fused score; DENSE: dense_score; KEYWORD: keyword_score.
    score: float
    text: str
    metadata: Mapping[str, MetadataScalar]
    # Rank (1 = best) and score in each retriever's results; 0 when it did
    # not return this chunk (or did not run).
    dense_rank: int = 0
    dense_score: float = 0.0
    keyword_rank: int = 0
    keyword_score: float = 0.0


@dataclass(frozen=True)
class SearchResult:
    hits: list[SearchHit]
    # HYBRID answered without the dense retriever (the vector service away).
    degraded: bool = False
    degraded_reason: str = ""


@dataclass(frozen=True)
class ReconcileOutcome:
    missing_vectors: int = 0
    orphan_vectors: int = 0
    stale_vectors: int = 0
    pending_resumed: int = 0
    dry_run: bool = False
    vector_collection_missing: bool = False
    # Vectors of INDEXED chunks with no record of the text they were
    # embedded from (older ones, raw ones): re-embedded on repair.
    unverified_vectors: int = 0
