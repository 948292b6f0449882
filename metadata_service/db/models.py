"""The schema (SQLAlchemy 2.0 typed ORM). Alembic migrations mirror it.

Metadata lives in its own table, one typed row per key, rather than in a JSON
column: a filter then compares a number with a number and a string with a
string on every backend (JSON extraction in SQLite would compare the text "10"
greater than the integer 9), and every comparison can use an index.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Double,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from metadata_service.domain import IndexState

# Stable constraint names, so migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored as UTC and always read back timezone-aware (SQLite
    keeps no zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


_STATE = Enum(IndexState, native_enum=False, length=16, validate_strings=True, name="index_state")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class CollectionRow(Base):
    __tablename__ = "collections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    embedding_model: Mapped[str] = mapped_column(String(255))
    embedding_dimension: Mapped[int] = mapped_column(Integer)
    chunk_size: Mapped[int] = mapped_column(Integer)
    chunk_overlap: Mapped[int] = mapped_column(Integer)
    # What chunk_size/chunk_overlap count: a ChunkUnit value (migration 0006:
    # collections made before it count characters).
    chunk_unit: Mapped[str] = mapped_column(String(16), server_default="CHARACTERS")
    # The vector service's collection: the name plus a random suffix, so a
    # collection deleted and created again never shares vectors (or a pending
    # drop) with its predecessor.
    vector_collection: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DocumentRow(Base):
    __tablename__ = "documents"
    __table_args__ = (
        # Also the keyset of ListDocuments' cursor (collection, external id).
        UniqueConstraint("collection_id", "external_id"),
        Index(None, "collection_id", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"))
    # The id the client chose.
    external_id: Mapped[str] = mapped_column(String(512))
    text: Mapped[str] = mapped_column(Text)
    # sha256 of the text: unchanged text is never chunked or embedded again.
    content_hash: Mapped[str] = mapped_column(String(64))
    # sha256 of the canonical typed metadata: a metadata-only change updates
    # vector metadata without re-embedding.
    metadata_hash: Mapped[str] = mapped_column(String(64))
    # Bumped on every change; vectors carry it, so stale ones are recognisable.
    generation: Mapped[int] = mapped_column(BigInteger, default=1)
    # Random, fixed for the row's life: vectors carry it, so a pending
    # deletion of this document never touches the vectors of a document
    # created later under the same id.
    incarnation: Mapped[int] = mapped_column(BigInteger, default=0)
    state: Mapped[IndexState] = mapped_column(_STATE, default=IndexState.PENDING)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    chunk_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    metadata_entries: Mapped[list[MetadataRow]] = relationship(
        back_populates="document",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="MetadataRow.key",
    )


class MetadataRow(Base):
    """One metadata key of a document; exactly one value column is set."""

    __tablename__ = "document_metadata"
    __table_args__ = (
        Index(None, "key", "string_value"),
        Index(None, "key", "int_value"),
        Index(None, "key", "float_value"),
    )

    document_id: Mapped[int] = mapped_column(
        ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    string_value: Mapped[str | None] = mapped_column(Text, default=None)
    int_value: Mapped[int | None] = mapped_column(BigInteger, default=None)
    float_value: Mapped[float | None] = mapped_column(Double, default=None)
    bool_value: Mapped[bool | None] = mapped_column(Boolean, default=None)

    document: Mapped[DocumentRow] = relationship(back_populates="metadata_entries")


class ChunkRow(Base):
    """A piece of a document and its indexing state: the outbox that the
    indexing pipeline drains into the vector service."""

    __tablename__ = "chunks"
    __table_args__ = (
        UniqueConstraint("document_id", "ordinal"),
        # Only unfinished chunks are indexed: the outbox scan stays small
        # however many chunks are INDEXED.
        Index(
            "ix_chunks_outbox",
            "state",
            "id",
            sqlite_where=text("state != 'INDEXED'"),
            postgresql_where=text("state != 'INDEXED'"),
        ),
        # GetStats counts truncated chunks: the few there are, not all.
        Index(
            "ix_chunks_truncated",
            "document_id",
            sqlite_where=text("truncated = 1"),
            postgresql_where=text("truncated = true"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    ordinal: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    # Character offsets of the chunk in the document text.
    start_offset: Mapped[int] = mapped_column(Integer)
    end_offset: Mapped[int] = mapped_column(Integer)
    state: Mapped[IndexState] = mapped_column(_STATE, default=IndexState.PENDING)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Set while one indexer (an ingest call or the background one) is sending
    # the chunk; others skip it until then. Also the claim's token: an
    # acknowledgement only lands if the lease is still the one it took.
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # The vector service embedded only the start of the text: it was longer
    # than the model's window (a collection with too large a chunk_size).
    truncated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class VectorDeletionRow(Base):
    """Vectors to remove (the deletion outbox), written in the transaction
    that deletes or shrinks their documents or drops their collection, so a
    crash at any point leaves the work recorded. Each names its vectors by
    the document's incarnation and generation, never by id alone, so it can
    run late without hitting a newer version's vectors as such. (A vector
    under a newer version's id can still go: one an older send overwrote,
    or one another replica wrote inside the removal's read-then-delete;
    settling a removal therefore re-sends the document now at those ids.)"""

    __tablename__ = "vector_deletions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    vector_collection: Mapped[str] = mapped_column(String(128))
    # None: drop the whole vector collection.
    document_id: Mapped[str | None] = mapped_column(String(512), default=None)
    incarnation: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # Vectors of chunk ordinals >= this (0: every chunk) ...
    first_ordinal: Mapped[int] = mapped_column(Integer, default=0)
    # ... and of generations <= this.
    max_generation: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
