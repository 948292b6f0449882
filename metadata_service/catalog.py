"""The service layer: what each metadata RPC does, one transaction per unit of
work. Synchronous by design — the servicer runs these methods on a bounded
thread pool, never on the event loop — and free of gRPC types.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from askmojo.common.echo import quoted
from askmojo.common.filters import FilterNode
from metadata_service import lookup, outbox, validation
from metadata_service.config import MetadataSettings
from metadata_service.db import (
    collection_queries,
    document_queries,
    keyword_index,
    secret_queries,
    stats_queries,
)
from metadata_service.db.collection_queries import CollectionHandle
from metadata_service.db.document_queries import StoredDocument
from metadata_service.db.engine import Database
from metadata_service.db.models import CollectionRow, DocumentRow, utcnow
from metadata_service.db.stats_queries import CollectionCounts
from metadata_service.domain import (
    ChunkingSpec,
    ChunkUnit,
    CollectionInfo,
    CollectionSpec,
    DeleteCollectionOutcome,
    DeleteDocumentsOutcome,
    DocumentInfo,
    DocumentInput,
    DocumentQuery,
    IndexState,
    Page,
    Stats,
    UpsertOutcome,
    UpsertState,
)
from metadata_service.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    MetadataError,
    NotFound,
)
from metadata_service.paging import (
    PageTokens,
    document_bytes,
    page_byte_budget,
    query_fingerprint,
)
from metadata_service.validation import PreparedDocument

_LOGGER = logging.getLogger(__name__)


class Catalog:
    def __init__(self, db: Database, settings: MetadataSettings) -> None:
        self._db = db
        self._settings = settings
        secret = settings.page_token_secret
        self._page_tokens = (
            None if secret is None else PageTokens(secret.get_secret_value().encode())
        )
        self._page_tokens_lock = threading.Lock()

    # --- collections ----------------------------------------------------------

    def create_collection(self, spec: CollectionSpec) -> CollectionInfo:
        validation.collection_name(spec.name, "name")
        validation.plain_text(spec.description, "description", max_bytes=4096)
        validation.plain_text(spec.model, "model", max_bytes=255, single_line=True)
        model = spec.model or self._settings.default_embedding_model
        dimension = spec.dimension or (
            self._settings.default_embedding_dimension
            if model == self._settings.default_embedding_model
            else 0
        )
        if spec.dimension < 0 or dimension == 0:
            raise InvalidArgument(
                "dimension",
                f"give the embedding dimension of model {quoted(model)} (a positive number)",
            )
        if model == self._settings.default_embedding_model and (
            dimension != self._settings.default_embedding_dimension
        ):
            expected = self._settings.default_embedding_dimension
            raise FailedPrecondition(
                f"model {quoted(model)} produces {expected}-dimensional vectors, not {dimension}"
            )
        chunking = validation.chunking(spec, model, self._settings)

        def work(session: Session) -> CollectionInfo:
            if collection_queries.get_collection(session, spec.name) is not None:
                raise AlreadyExists(f"collection {quoted(spec.name)} already exists")
            row = collection_queries.add_collection(
                session,
                CollectionRow(
                    name=spec.name,
                    description=spec.description,
                    embedding_model=model,
                    embedding_dimension=dimension,
                    chunk_size=chunking.chunk_size,
                    chunk_overlap=chunking.chunk_overlap,
                    chunk_unit=chunking.unit,
                    vector_collection=_vector_collection_name(spec.name),
                    created_at=utcnow(),
                ),
            )
            return _collection_info(row, CollectionCounts())

        info = self._db.write(work)
        _LOGGER.info("collection created", extra={"collection": info.name, "model": info.model})
        return info

    def get_collection(self, name: str) -> CollectionInfo:
        def work(session: Session) -> CollectionInfo:
            row = lookup.collection_row(session, name)
            counts = stats_queries.collection_counts(session, [row.id]).get(
                row.id, CollectionCounts()
            )
            return _collection_info(row, counts)

        return self._db.read(work)

    def list_collections(self, page_size: int, page_token: str) -> Page[CollectionInfo]:
        limit = validation.page_size(page_size, self._settings)
        tokens = self._tokens()
        fingerprint = query_fingerprint("collections")
        after = tokens.decode(page_token, fingerprint)

        def work(session: Session) -> Page[CollectionInfo]:
            rows = collection_queries.list_collections(session, after, limit + 1)
            page, more = rows[:limit], len(rows) > limit
            counts = stats_queries.collection_counts(session, [row.id for row in page])
            items = [_collection_info(r, counts.get(r.id, CollectionCounts())) for r in page]
            token = tokens.encode(page[-1].name, fingerprint) if more else ""
            return Page(items, token)

        return self._db.read(work)

    def delete_collection(
        self, name: str, lease: datetime | None = None
    ) -> DeleteCollectionOutcome:
        """With a `lease`, the vector deletion recorded is held for the caller
        to carry out (the background loop takes it if the lease runs out)."""

        def work(session: Session) -> DeleteCollectionOutcome:
            # Locked first (PostgreSQL): writes into it finish before it is
            # counted and removed; a delete that ran meanwhile makes it NOT_FOUND.
            row = lookup.collection_row(session, name, lock=True)
            counts = stats_queries.collection_counts(session, [row.id]).get(
                row.id, CollectionCounts()
            )
            collection_queries.delete_collection(session, row.id)
            outbox.record_collection_drop(session, row.vector_collection, lease)
            return DeleteCollectionOutcome(counts.documents, counts.chunks)

        outcome = self._db.write(work)
        _LOGGER.info(
            "collection deleted",
            extra={"collection": name, "documents": outcome.deleted_documents},
        )
        return outcome

    # --- documents ------------------------------------------------------------

    def upsert_documents(
        self,
        collection: str,
        documents: Sequence[DocumentInput],
        lease: datetime | None = None,
    ) -> list[UpsertOutcome]:
        """Stores a batch; returns one outcome per input, in order. Invalid
        documents get their own error and never stop the valid ones. With a
        `lease`, the chunks written are held under it for the caller to index
        (the background indexer leaves them alone until it expires)."""
        if not documents:
            raise InvalidArgument("documents", "the batch is empty: send at least one document")
        limit = self._settings.max_batch_documents
        if len(documents) > limit:
            raise InvalidArgument(
                "documents",
                f"{len(documents)} documents in one batch; the limit is {limit} "
                "(MAX_BATCH_DOCUMENTS): split the batch",
            )

        def look_up(
            session: Session,
        ) -> tuple[CollectionHandle, dict[str, StoredDocument]]:
            # One read serves two purposes: the collection's chunking settings,
            # and spotting an entirely unchanged batch, which then takes no
            # write lock at all (clients re-send batches after any failure).
            ref = lookup.collection_handle(session, collection)
            return ref, document_queries.find_documents(session, ref.id, {d.id for d in documents})

        ref, stored = self._db.read(look_up)

        outcomes: dict[int, UpsertOutcome] = {}
        prepared: list[tuple[int, PreparedDocument]] = []
        first_index: dict[str, int] = {}
        for index, doc in enumerate(documents):
            field = f"documents[{index}]"
            try:
                if doc.id in first_index:
                    raise InvalidArgument(
                        f"{field}.id",
                        f"id {quoted(doc.id)} is also at documents[{first_index[doc.id]}]: "
                        "send each id once per batch",
                    )
                prepared.append(
                    (
                        index,
                        validation.prepare_document(
                            doc, ref.chunking, self._settings, field, ref.model
                        ),
                    )
                )
                first_index[doc.id] = index
            except InvalidArgument as exc:
                outcomes[index] = UpsertOutcome(doc.id, UpsertState.FAILED, exc)

        if prepared:
            valid = [p for _, p in prepared]
            written = (
                {p.id: _unchanged(p.id, stored[p.id]) for p in valid}
                if all(_is_unchanged(p, stored.get(p.id)) for p in valid)
                else self._db.write(
                    lambda s: self._store_documents(s, collection, ref, valid, lease)
                )
            )
            for index, p in prepared:
                outcomes[index] = written[p.id]
        return [outcomes[index] for index in range(len(documents))]

    def ingest_batch(
        self, collection: str, documents: Sequence[DocumentInput], lease: datetime | None = None
    ) -> tuple[list[UpsertOutcome], MetadataError | None]:
        """One batch of an ingest stream: like upsert_documents, except that a
        batch-level problem (unknown collection, empty or oversized batch) is
        returned with that batch's documents failed, instead of ending the
        stream."""
        try:
            return self.upsert_documents(collection, documents, lease), None
        except MetadataError as exc:
            return [UpsertOutcome(d.id, UpsertState.FAILED, exc) for d in documents], exc

    def _store_documents(
        self,
        session: Session,
        collection: str,
        looked_up: CollectionHandle,
        docs: Sequence[PreparedDocument],
        lease: datetime | None,
    ) -> dict[str, UpsertOutcome]:
        # The collection may have been deleted (and even re-created, with other
        # chunking settings, perhaps under the same row id) since it was
        # looked up: its vector collection name is new with every creation.
        # Locked (PostgreSQL): a concurrent delete cannot slip in before the
        # documents are inserted under it.
        ref = lookup.collection_handle(session, collection, lock=True)
        if ref != looked_up:
            raise Aborted(
                f"collection {quoted(collection)} was re-created meanwhile; send the batch again"
            )
        collection_id = ref.id
        # Rows are written in id order, the order find_documents locks them in,
        # so two batches sharing ids never deadlock on PostgreSQL.
        docs = sorted(docs, key=lambda doc: doc.id)
        stored = document_queries.find_documents(
            session, collection_id, [doc.id for doc in docs], lock=True
        )
        now = utcnow()
        outcomes: dict[str, UpsertOutcome] = {}
        new_rows, updates = [], []
        chunks_of: dict[str, PreparedDocument] = {}  # documents whose chunks are rewritten
        metadata_of: dict[str, PreparedDocument] = {}  # documents whose metadata is rewritten
        pending_again: list[int] = []  # text kept: chunks re-sent as they are
        shrunk: list[outbox.Shrink] = []  # shorter texts: vectors of their dropped chunks go
        for doc in docs:
            old = stored.get(doc.id)
            if old is None:
                new_rows.append(_new_document_row(collection_id, doc, now))
                chunks_of[doc.id] = metadata_of[doc.id] = doc
                outcomes[doc.id] = UpsertOutcome(
                    doc.id, UpsertState.PENDING, chunk_count=len(doc.chunks), generation=1
                )
                continue
            if _is_unchanged(doc, old):
                outcomes[doc.id] = _unchanged(doc.id, old)
                continue
            # Changed text, changed metadata, or a FAILED document sent again.
            text_changed = doc.content_hash != old.content_hash
            updates.append(
                {
                    "id": old.pk,
                    "metadata_hash": doc.metadata_hash,
                    "generation": old.generation + 1,
                    "state": IndexState.PENDING,
                    "error": None,
                    "updated_at": now,
                    **(
                        {
                            "text": doc.text,
                            "content_hash": doc.content_hash,
                            "chunk_count": len(doc.chunks),
                        }
                        if text_changed
                        else {}
                    ),
                }
            )
            if text_changed:
                chunks_of[doc.id] = doc
                if len(doc.chunks) < old.chunk_count:
                    shrunk.append(outbox.Shrink(doc.id, old, len(doc.chunks)))
            else:
                pending_again.append(old.pk)
            if doc.metadata_hash != old.metadata_hash:
                metadata_of[doc.id] = doc
            outcomes[doc.id] = UpsertOutcome(
                doc.id,
                UpsertState.PENDING,
                chunk_count=len(doc.chunks),
                generation=old.generation + 1,
            )

        pks = {doc_id: old.pk for doc_id, old in stored.items()}
        pks.update(document_queries.insert_documents(session, new_rows))
        # Updates are grouped by their key set: SQLAlchemy's bulk UPDATE by
        # primary key runs one executemany per distinct set of columns.
        for keys in {frozenset(u) for u in updates}:
            document_queries.update_documents(session, [u for u in updates if frozenset(u) == keys])
        replaced = {old.pk for old in stored.values()}
        document_queries.write_chunks(
            session,
            {pks[i]: d.chunks for i, d in chunks_of.items()},
            now,
            replacing=[pks[i] for i in chunks_of if pks[i] in replaced],
            lease=lease,
        )
        outbox.record_shrinks(session, ref, shrunk)
        document_queries.write_metadata(
            session,
            {pks[i]: d.metadata for i, d in metadata_of.items()},
            replacing=[pks[i] for i in metadata_of if pks[i] in replaced],
        )
        document_queries.mark_chunks_pending(session, pending_again, now, lease=lease)
        return outcomes

    def get_document(self, collection: str, doc_id: str, *, include_text: bool) -> DocumentInfo:
        validation.document_id(doc_id, self._settings)

        def work(session: Session) -> DocumentInfo:
            ref = lookup.collection_handle(session, collection)
            row = document_queries.get_document(session, ref.id, doc_id, include_text=include_text)
            if row is None:
                raise NotFound(
                    f"document {quoted(doc_id)} not found in collection {quoted(collection)}"
                )
            return _document_info(row, include_text)

        return self._db.read(work)

    def list_documents(self, query: DocumentQuery) -> Page[DocumentInfo]:
        """A page of at most page_size documents that also fits in a response
        (MAX_MESSAGE_BYTES, less a margin): fewer, and a next_page_token,
        when their texts are large; always at least one. Sizes are read
        first, so no text is loaded that the page cannot carry."""
        limit = validation.page_size(query.page_size, self._settings)
        tokens = self._tokens()
        fingerprint = query_fingerprint(
            "documents", query.collection, query.filter, sorted(query.states)
        )
        after = tokens.decode(query.page_token, fingerprint)
        budget = page_byte_budget(self._settings.max_message_bytes)

        def work(session: Session) -> Page[DocumentInfo]:
            ref = lookup.collection_handle(session, query.collection)
            sizes = document_queries.list_document_sizes(
                session,
                ref.id,
                where=query.filter,
                states=query.states,
                after=after,
                limit=limit + 1,
                include_text=query.include_text,
            )
            chosen = _fitting(
                [document_bytes(s.data_bytes, s.metadata_entries) for s in sizes[:limit]], budget
            )
            rows = document_queries.list_documents(
                session,
                ref.id,
                [s.pk for s in sizes[:chosen]],
                where=query.filter,
                states=query.states,
                include_text=query.include_text,
            )
            items = [_document_info(row, query.include_text) for row in rows]
            # Measured again as loaded: on PostgreSQL a document may have
            # grown since its size was read.
            kept = _fitting([_document_bytes(item) for item in items], budget)
            if kept < len(items):
                more, last = True, items[kept - 1].id
            else:  # every chosen key is done with, loaded or gone meanwhile
                more, last = len(sizes) > chosen, sizes[chosen - 1].external_id if chosen else ""
            return Page(items[:kept], tokens.encode(last, fingerprint) if more else "")

        return self._db.read(work)

    def delete_documents(
        self,
        collection: str,
        ids: Sequence[str],
        where: FilterNode | None,
        lease: datetime | None = None,
    ) -> DeleteDocumentsOutcome:
        if bool(ids) == (where is not None):
            raise InvalidArgument(
                "ids", "give either ids or filter (exactly one) to choose what to delete"
            )
        if len(ids) > self._settings.max_batch_documents:
            raise InvalidArgument(
                "ids",
                f"{len(ids)} ids; the limit is {self._settings.max_batch_documents} per call",
            )
        for index, doc_id in enumerate(ids):
            validation.document_id(doc_id, self._settings, f"ids[{index}]")
        if where is not None:
            # DELETE_BATCH_DOCUMENTS per transaction, vectors left to the
            # deletion outbox. The service never gets here: the pipeline
            # calls delete_matching itself, removing each batch's vectors in
            # between.
            total, cursor = 0, None
            while True:
                batch = self.delete_matching(collection, where, lease, cursor)
                total += batch.deleted
                if batch.cursor is None:
                    return DeleteDocumentsOutcome(total)
                cursor = batch.cursor

        def work(session: Session) -> DeleteDocumentsOutcome:
            ref = lookup.collection_handle(session, collection)
            deleted = document_queries.delete_documents(session, ref.id, external_ids=list(ids))
            outbox.record_document_deletions(session, ref, deleted, lease)
            gone = {d.external_id for d in deleted}
            return DeleteDocumentsOutcome(
                len(deleted), [i for i in dict.fromkeys(ids) if i not in gone]
            )

        return self._db.write(work)

    def delete_matching(
        self,
        collection: str,
        where: FilterNode,
        lease: datetime | None,
        cursor: DeleteCursor | None,
    ) -> DeletedBatch:
        """One batch of a delete by filter: up to DELETE_BATCH_DOCUMENTS
        matching documents, in one transaction with their deletion outbox
        rows (under `lease`). Memory and the vector calls per batch stay
        bounded however many documents match. `cursor` None starts the
        delete; it covers the documents that exist then, not those created
        while it runs. The result's cursor is None when no batch is left."""
        limit = self._settings.delete_batch_documents

        def work(session: Session) -> DeletedBatch:
            ref = lookup.collection_handle(session, collection)
            start = cursor or DeleteCursor(0, document_queries.newest_document_pk(session, ref.id))
            pks = document_queries.matching_document_pks(
                session, ref.id, where, after=start.after, through=start.through, limit=limit
            )
            deleted = document_queries.delete_documents(session, ref.id, pks=pks) if pks else []
            outbox.record_document_deletions(session, ref, deleted, lease)
            more = len(pks) == limit
            return DeletedBatch(
                len(deleted), DeleteCursor(pks[-1], start.through) if more else None
            )

        return self._db.write(work)

    # --- stats ----------------------------------------------------------------

    def stats(self, collection: str) -> Stats:
        def work(session: Session) -> Stats:
            collection_id = lookup.collection_handle(session, collection).id if collection else None
            return Stats(
                pool=self._db.pool_status(),
                storage=self._db.storage_status(),
                documents_by_state=stats_queries.documents_by_state(session, collection_id),
                chunk_count=stats_queries.chunk_total(session, collection_id),
                worker_pid=os.getpid(),
                truncated_chunk_count=stats_queries.truncated_chunk_total(session, collection_id),
                keyword_index_bytes=keyword_index.index_size(session),
            )

        return self._db.read(work)

    # --- helpers --------------------------------------------------------------

    def _tokens(self) -> PageTokens:
        """The deployment's page token signer: PAGE_TOKEN_SECRET, else the
        secret kept in the database, which its first reader makes."""
        if self._page_tokens is None:
            with self._page_tokens_lock:
                if self._page_tokens is None:
                    secret = self._db.read(secret_queries.page_token_secret)
                    if secret is None:
                        candidate = secrets.token_hex(32)
                        secret = self._db.write(
                            lambda s: secret_queries.add_page_token_secret(s, candidate)
                        )
                    self._page_tokens = PageTokens(secret.encode())
        return self._page_tokens


@dataclass(frozen=True)
class DeleteCursor:
    """Where a delete by filter stands: documents with row ids in
    (after, through] are still to be looked at."""

    after: int
    through: int


@dataclass(frozen=True)
class DeletedBatch:
    deleted: int
    cursor: DeleteCursor | None  # None: the delete is complete


def new_incarnation() -> int:
    """Random and positive within a signed 64-bit column (and Chroma's int)."""
    return secrets.randbits(62) + 1


def _vector_collection_name(name: str) -> str:
    """`<name>-<8 hex>`: within the vector service's 63 characters, unique per
    creation (see CollectionRow.vector_collection)."""
    return f"{name[:54]}-{secrets.token_hex(4)}"


def _is_unchanged(doc: PreparedDocument, old: StoredDocument | None) -> bool:
    """Same text and metadata, and nothing to retry: re-sending a document
    whose indexing FAILED queues it again."""
    return (
        old is not None
        and old.content_hash == doc.content_hash
        and old.metadata_hash == doc.metadata_hash
        and old.state is not IndexState.FAILED
    )


def _unchanged(doc_id: str, old: StoredDocument) -> UpsertOutcome:
    return UpsertOutcome(
        doc_id, UpsertState.UNCHANGED, chunk_count=old.chunk_count, generation=old.generation
    )


def _new_document_row(collection_id: int, doc: PreparedDocument, now: object) -> dict[str, object]:
    return {
        "collection_id": collection_id,
        "external_id": doc.id,
        "text": doc.text,
        "content_hash": doc.content_hash,
        "metadata_hash": doc.metadata_hash,
        "generation": 1,
        "incarnation": new_incarnation(),
        "state": IndexState.PENDING,
        "error": None,
        "chunk_count": len(doc.chunks),
        "created_at": now,
        "updated_at": now,
    }


def _collection_info(row: CollectionRow, counts: CollectionCounts) -> CollectionInfo:
    return CollectionInfo(
        name=row.name,
        description=row.description,
        model=row.embedding_model,
        dimension=row.embedding_dimension,
        chunking=ChunkingSpec(row.chunk_size, row.chunk_overlap, ChunkUnit(row.chunk_unit)),
        document_count=counts.documents,
        chunk_count=counts.chunks,
        created_at=row.created_at,
        vector_collection=row.vector_collection,
    )


def _document_bytes(info: DocumentInfo) -> int:
    """What document_queries.list_document_sizes measures, for a loaded document."""
    data = [info.id, info.text or "", info.error or ""]
    data += [key for key in info.metadata]
    data += [value for value in info.metadata.values() if isinstance(value, str)]
    return document_bytes(sum(len(part.encode()) for part in data), len(info.metadata))


def _fitting(sizes: Sequence[int], budget: int) -> int:
    """How many of `sizes`, from the first, fit in `budget` together; at
    least one (the settings make sure any single document fits)."""
    total = 0
    for count, size in enumerate(sizes):
        total += size
        if total > budget:
            return max(count, 1)
    return len(sizes)


def _document_info(row: DocumentRow, include_text: bool) -> DocumentInfo:
    return DocumentInfo(
        id=row.external_id,
        text=row.text if include_text else None,
        metadata={
            entry.key: document_queries.metadata_value(entry) for entry in row.metadata_entries
        },
        state=row.state,
        content_hash=row.content_hash,
        generation=row.generation,
        chunk_count=row.chunk_count,
        error=row.error,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
