"""The outbox: the one owner of the indexing state the database keeps for the
vector service (DESIGN.md §6). `indexing.py` and `pipeline.py` go through it;
`catalog.py` only fills it, in the transactions of the writes that need it.

Two queues:
- chunks in state PENDING: each becomes a vector, id `<document id>#<ordinal>`
  (`vector_id`), whose metadata is the document's plus reserved keys naming
  its document, incarnation, generation and content hash (`vector_metadata`);
- rows of `vector_deletions`: vectors to remove after a delete, a shrink or a
  dropped collection (`deletion_filter` names them).

Work is leased (`lease_until`): claimed, then settled under the same lease,
or released. Here too are the checks that read the vector service's answers
against the chunks: Search's join and Reconcile's comparison.

Each public method of `Outbox` is one transaction (db.read / db.write), run
on the service's thread pool by its async callers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from sqlalchemy.orm import Session

from askmojo.common.filters import AllOf, Condition, FilterNode, MetadataScalar, Op
from askmojo.common.text_hash import text_hash
from metadata_service import lookup
from metadata_service.db import (
    collection_queries,
    document_queries,
    keyword_index,
    lease_queries,
    outbox_queries,
    search_queries,
)
from metadata_service.db.collection_queries import CollectionHandle
from metadata_service.db.document_queries import DeletedDocument, StoredDocument
from metadata_service.db.engine import Database
from metadata_service.db.keyword_index import KeywordHit
from metadata_service.db.models import VectorDeletionRow, utcnow
from metadata_service.db.outbox_queries import ClaimedChunk
from metadata_service.db.search_queries import IndexedChunk
from metadata_service.domain import IndexState

# Reserved vector metadata keys ("_" starts no client key: validation.py).
DOC_KEY = "_doc"
ORDINAL_KEY = "_ord"
INCARNATION_KEY = "_inc"
GENERATION_KEY = "_gen"
HASH_KEY = "_hash"
# Enough of the sha256 to tell versions apart.
_HASH_CHARS = 16
# Documents per state refresh in Reconcile's repair: bounds one statement's
# IN list (and its row locks) however many documents wait.
_STATE_REFRESH_BATCH = 1000


# --- the vector-id scheme ------------------------------------------------------


class ChunkPlace(NamedTuple):
    """Where a chunk is: what a vector's id names."""

    document_id: str
    ordinal: int


def vector_id(document_id: str, ordinal: int) -> str:
    """Deterministic: a replay overwrites the same vector instead of adding one."""
    return f"{document_id}#{ordinal}"


def parse_vector_id(value: str) -> ChunkPlace | None:
    document_id, sep, ordinal = value.rpartition("#")
    if not sep or not ordinal.isdigit():
        return None
    return ChunkPlace(document_id, int(ordinal))


def vector_metadata(
    chunk: ClaimedChunk, document_metadata: Mapping[str, MetadataScalar]
) -> dict[str, MetadataScalar]:
    return {
        **document_metadata,
        DOC_KEY: chunk.document_id,
        ORDINAL_KEY: chunk.ordinal,
        INCARNATION_KEY: chunk.incarnation,
        GENERATION_KEY: chunk.generation,
        HASH_KEY: chunk.content_hash[:_HASH_CHARS],
    }


@dataclass(frozen=True)
class VectorVersion:
    """A vector as its id and reserved metadata describe it: the chunk it
    claims to be (None: not one of ours) and the version of its text."""

    vector_id: str
    place: ChunkPlace | None
    incarnation: int | None
    hash_prefix: str | None
    # The vector service's hash of the text it embedded (TEXT_HASH_KEY); None
    # when it recorded none (an older vector, or a raw one).
    text_hash: str | None = None


def deletion_groups(rows: Sequence[VectorDeletionRow], limit: int) -> list[list[VectorDeletionRow]]:
    """The deletion rows in the groups one vector call each carries out:
    a dropped collection alone; the deleted documents of one vector
    collection up to `limit` together (DELETE_BATCH_DOCUMENTS, under the
    vector service's per-call limits); a shrunk document alone."""
    groups: list[list[VectorDeletionRow]] = []
    whole: dict[str, list[VectorDeletionRow]] = defaultdict(list)
    for row in rows:
        if row.document_id is not None and row.first_ordinal == 0:
            pending = whole[row.vector_collection]
            pending.append(row)
            if len(pending) >= limit:
                groups.append(whole.pop(row.vector_collection))
        else:
            groups.append([row])
    groups.extend(whole.values())
    return groups


def deletion_filter(rows: Sequence[VectorDeletionRow]) -> FilterNode:
    """The vectors a group of deletion rows stands for (never a newer
    version's). Several rows: deleted documents, whose incarnations died with
    their rows, so every vector carrying one of them goes, whatever its
    generation (ingest never gives a document 0 chunks: a row with
    first_ordinal 0 always stands for a deleted document)."""
    if len(rows) > 1:
        assert all(r.incarnation is not None and r.first_ordinal == 0 for r in rows)
        incarnations = tuple(sorted({r.incarnation for r in rows if r.incarnation is not None}))
        return Condition(INCARNATION_KEY, Op.IN, incarnations)
    row = rows[0]
    assert row.incarnation is not None
    conditions: list[FilterNode] = [
        Condition(INCARNATION_KEY, Op.EQ, (row.incarnation,)),
        Condition(GENERATION_KEY, Op.LTE, (row.max_generation,)),
    ]
    if row.first_ordinal > 0:
        conditions.append(Condition(ORDINAL_KEY, Op.GTE, (row.first_ordinal,)))
    return AllOf(tuple(conditions))


# --- filling the deletion queue (inside the caller's write) --------------------


def record_collection_drop(
    session: Session, vector_collection: str, lease: datetime | None
) -> None:
    """A dropped collection's vectors go with it, now or, if the vector
    service is down, when it is back: recorded in the drop's transaction."""
    outbox_queries.add_deletions(
        session,
        [{**_DELETION_DEFAULTS, "vector_collection": vector_collection, "lease_until": lease}],
    )


@dataclass(frozen=True)
class Shrink:
    """A rewritten document now shorter than its `old` version: the vectors
    past its new last chunk must go."""

    document_id: str
    old: StoredDocument
    chunks: int


def record_shrinks(
    session: Session, collection: CollectionHandle, shrunk: Sequence[Shrink]
) -> None:
    """Their removal, recorded in the rewrite's transaction."""
    outbox_queries.add_deletions(
        session,
        [
            {
                **_DELETION_DEFAULTS,
                "vector_collection": collection.vector_collection,
                "document_id": s.document_id,
                "incarnation": s.old.incarnation,
                "first_ordinal": s.chunks,
                "max_generation": s.old.generation,
            }
            for s in shrunk
        ],
    )


def record_document_deletions(
    session: Session,
    collection: CollectionHandle,
    deleted: Sequence[DeletedDocument],
    lease: datetime | None,
) -> None:
    """The vectors' removal, recorded with the rows' (the deletion outbox):
    it happens now, or when the vector service is back."""
    outbox_queries.add_deletions(
        session,
        [
            {
                **_DELETION_DEFAULTS,
                "vector_collection": collection.vector_collection,
                "document_id": d.external_id,
                "incarnation": d.incarnation,
                "max_generation": d.generation,
                "lease_until": lease,
            }
            for d in deleted
        ],
    )


# Column defaults of a vector_deletions row (Core inserts skip ORM defaults).
_DELETION_DEFAULTS: dict[str, object] = {
    "document_id": None,
    "incarnation": None,
    "first_ordinal": 0,
    "max_generation": 0,
    "attempts": 0,
    "error": None,
    "lease_until": None,
}


# --- what the outbox answers ---------------------------------------------------


@dataclass(frozen=True)
class IndexingState:
    """Where a document's indexing stands, as an ingest call reports it."""

    state: IndexState
    error: str | None
    truncated_chunks: int


@dataclass(frozen=True)
class ClaimedWork:
    """The chunks held under a lease, with their documents' metadata by
    document row id."""

    chunks: list[ClaimedChunk]
    metadata: dict[int, dict[str, MetadataScalar]]


@dataclass(frozen=True)
class LiveText:
    """Search's join: a live chunk's text and its document's metadata."""

    text: str
    metadata: dict[str, MetadataScalar]


@dataclass(frozen=True)
class SearchCandidates:
    """Search's candidates, read in one snapshot: the live vector matches by
    place, the keyword hits best first, and the keyword hits' text."""

    dense: dict[ChunkPlace, LiveText]
    keyword: list[KeywordHit]
    keyword_text: dict[ChunkPlace, LiveText]


@dataclass(frozen=True)
class VectorCheck:
    """Reconcile, one page of vectors: those with no live chunk of their
    incarnation, how many carry another text than their live chunk's, and
    how many nothing shows were made from it."""

    orphans: list[str]
    stale: int
    unverified: int = 0


class Outbox:
    def __init__(self, db: Database) -> None:
        self._db = db

    def now(self) -> datetime:
        """What a lease is judged against: the database's time (db/clock.py),
        the same for every replica whatever its host's clock says. Read as
        the claim's transaction runs (a write may wait its turn or be
        retried: an earlier reading would judge leases too early)."""
        return self._db.clock.now()

    def collection(self, name: str) -> CollectionHandle:
        """The collection a Search or Reconcile names."""

        def work(session: Session) -> CollectionHandle:
            return lookup.collection_handle(session, name, field="collection")

        return self._db.read(work)

    def vector_collection_in_use(self, vector_collection: str) -> bool:
        """Whether the collection behind a vector collection still exists."""
        return self._db.read(
            lambda s: collection_queries.vector_collection_in_use(s, vector_collection)
        )

    # --- chunks ---------------------------------------------------------------

    def claim_chunks(
        self,
        lease: datetime,
        limit: int,
        collection: CollectionHandle | None = None,
    ) -> int:
        """Leases up to `limit` PENDING chunks nobody holds (of `collection`,
        or of any); returns how many."""
        collection_id = None if collection is None else collection.id
        return len(
            self._db.write(
                lambda s: outbox_queries.claim_chunks(
                    s, now=self.now(), lease_until=lease, limit=limit, collection_id=collection_id
                )
            )
        )

    def claimed(self, lease: datetime) -> ClaimedWork:
        def work(session: Session) -> ClaimedWork:
            chunks = outbox_queries.claimed_chunks(session, lease)
            return ClaimedWork(
                chunks, outbox_queries.metadata_of(session, {c.document_pk for c in chunks})
            )

        return self._db.read(work)

    def settle_chunks(
        self,
        lease: datetime,
        indexed: Collection[int],
        failed: Mapping[int, str],
        released: Collection[int],
        truncated: Collection[int],
        *,
        sent: Mapping[int, ClaimedChunk] | None = None,
    ) -> None:
        """Records what the vector service said of chunks sent under `lease`
        (`truncated`: indexed ones embedded only in part), and the states of
        their documents.

        A chunk acknowledged but no longer held under `lease` was rewritten
        or deleted while it was sent (by another call, worker or replica),
        and its vector was written all the same: possibly after the newer
        version's, or after the deletion removed the vectors. Ids being
        deterministic, the late write replaced the newer vector with an
        older text, or left an orphan. So (with `sent`, the chunks as
        claimed) the document's chunks are sent again (its current text
        wins, being written after this), or, if the document is gone, its
        vectors of that version are removed through the deletion outbox."""

        def work(session: Session) -> None:
            now = utcnow()
            # Documents before chunks, the order writers lock them in (an
            # ingest rewriting one of them): no deadlock to retry. Every
            # document refreshed below is one of these.
            locked = sent is not None
            if sent is not None:
                outbox_queries.lock_documents(session, {c.document_pk for c in sent.values()})
            superseded: set[int] = set()
            documents = outbox_queries.settle_chunks(
                session,
                lease,
                indexed=indexed,
                failed=failed,
                released=released,
                now=now,
                truncated=truncated,
                superseded=superseded,
            )
            stale = [sent[c] for c in superseded if sent is not None and c in sent]
            if stale:
                documents = [*documents, *_repair_superseded(session, stale, now)]
            outbox_queries.refresh_document_states(session, documents, now, locked=locked)

        self._db.write(work)

    def release_lease(self, lease: datetime) -> None:
        """Gives back every chunk still held under `lease`."""
        self._db.write(lambda s: outbox_queries.release_lease(s, lease))

    def renew_lease(self, lease: datetime, renewed: datetime) -> int:
        """The chunks still held under `lease` now held under `renewed` (a
        later expiry, the claim's new token); returns how many."""
        return self._db.write(lambda s: lease_queries.renew(s, lease, renewed))

    def give_back(self, leases: Collection[datetime]) -> tuple[int, int]:
        """At shutdown: every chunk and deletion row still held under one of
        `leases` (all this process took) claimable again at once; returns
        how many chunks and deletion rows."""
        if not leases:
            return 0, 0
        return self._db.write(lambda s: lease_queries.give_back(s, leases))

    def chunks_held_by_others(self, collection: CollectionHandle) -> int:
        return self._db.read(
            lambda s: outbox_queries.chunks_held_by_others(
                s, now=self.now(), collection_id=collection.id
            )
        )

    def requeue_chunks(self, chunk_ids: Sequence[int]) -> None:
        def work(session: Session) -> None:
            _requeue(session, chunk_ids)

        self._db.write(work)

    def resume_unfinished(self, collection: CollectionHandle, *, repair: bool) -> int:
        """PENDING and FAILED chunks; with `repair`, all PENDING and unleased,
        ready for the indexer, and every document not INDEXED has its state
        computed again from its chunks: one left PENDING over INDEXED chunks
        (possible on PostgreSQL before settles locked their documents, see
        `outbox_queries.lock_documents`) would stay so otherwise."""

        def work(session: Session) -> int:
            chunk_ids = outbox_queries.unfinished_chunks(session, collection.id)
            if repair:
                now = utcnow()
                requeued = outbox_queries.requeue_chunks(session, chunk_ids, now)
                # One refresh for both: the requeued chunks' documents and
                # every other document not INDEXED.
                documents = sorted(
                    {*requeued, *outbox_queries.unsettled_documents(session, collection.id)}
                )
                for start in range(0, len(documents), _STATE_REFRESH_BATCH):
                    outbox_queries.refresh_document_states(
                        session, documents[start : start + _STATE_REFRESH_BATCH], now
                    )
            return len(chunk_ids)

        return (self._db.write if repair else self._db.read)(work)

    def document_states(self, collection: str, ids: Sequence[str]) -> dict[str, IndexingState]:
        def work(session: Session) -> dict[str, IndexingState]:
            handle = lookup.collection_handle(session, collection)
            stored = document_queries.find_documents(session, handle.id, set(ids))
            pks = [d.pk for d in stored.values()]
            states = outbox_queries.document_states(session, pks)
            truncated = outbox_queries.truncated_chunks_of(session, pks)
            return {
                doc_id: IndexingState(
                    states[d.pk].state, states[d.pk].error, truncated.get(d.pk, 0)
                )
                for doc_id, d in stored.items()
                if d.pk in states
            }

        return self._db.read(work)

    # --- deletions ------------------------------------------------------------

    def claim_deletions(self, lease: datetime, limit: int) -> list[VectorDeletionRow]:
        return self._db.write(
            lambda s: outbox_queries.claim_deletions(
                s, now=self.now(), lease_until=lease, limit=limit
            )
        )

    def leased_deletions(self, lease: datetime) -> list[VectorDeletionRow]:
        return self._db.read(lambda s: outbox_queries.leased_deletions(s, lease))

    def settle_deletions(
        self, rows: Sequence[VectorDeletionRow], done: Collection[int], error: str
    ) -> None:
        """Records the `done` rows of those claimed as finished and gives the
        others back with `error`.

        A finished removal of a document's vectors also sends again the
        chunks, from the first ordinal removed, of the document that holds
        that id in the collection now (created again, a new incarnation, or
        grown again after a shrink): their vectors share its vector ids, and
        the removal may have taken them. A late send of the old incarnation
        can have overwritten the new one's vector before the removal (see
        settle_chunks), and the vector service removes by filter as a read
        of the matching ids, then their deletion: an upsert landing in
        between goes too. Either way the chunk stayed INDEXED with no vector.
        Sent again after the removal, the current version's vectors win."""
        finished = set(done)
        undone = [r.id for r in rows if r.id not in finished]
        removed = [r for r in rows if r.id in finished and r.document_id is not None]

        def work(session: Session) -> None:
            outbox_queries.finish_deletions(session, done)
            outbox_queries.release_deletions(session, undone, error)
            if removed:
                now = utcnow()
                chunk_ids = outbox_queries.chunks_at_removed_places(session, removed)
                documents = outbox_queries.requeue_chunks(session, chunk_ids, now)
                outbox_queries.refresh_document_states(session, documents, now)

        self._db.write(work)

    # --- Search's join and Reconcile's checks ---------------------------------

    def search_candidates(
        self,
        collection: CollectionHandle,
        matches: Sequence[VectorVersion],
        where: FilterNode | None,
        keyword_query: str,
        keyword_limit: int,
    ) -> SearchCandidates:
        """Both retrievers' candidates in one snapshot, with their chunks'
        text and documents' metadata: the vector matches whose chunks are
        still live in that very version (a deleted or rewritten document's
        leftover vectors are never returned) and match `where` as stored
        now; and, when `keyword_query` is not empty, the keyword index's best
        `keyword_limit` chunks matching `where` (live chunks by construction)."""

        def work(session: Session) -> SearchCandidates:
            found = (
                keyword_index.search(session, collection.id, keyword_query, where, keyword_limit)
                if keyword_query
                else []
            )
            places = {m.place for m in matches if m.place is not None}
            places.update(ChunkPlace(h.document_id, h.ordinal) for h in found)
            live = search_queries.live_chunks(
                session, collection.id, places, where, with_metadata=True
            )
            dense = {}
            for match in matches:
                if match.place is None or match.place not in live:
                    continue
                chunk = live[match.place]
                if (
                    chunk.incarnation == match.incarnation
                    and match.hash_prefix is not None
                    and chunk.content_hash.startswith(match.hash_prefix)
                ):
                    dense[match.place] = LiveText(chunk.text, chunk.metadata)
            keyword = {}
            for hit in found:
                place = ChunkPlace(hit.document_id, hit.ordinal)
                if place in live:
                    keyword[place] = LiveText(live[place].text, live[place].metadata)
            return SearchCandidates(dense, found, keyword)

        return self._db.read(work)

    def check_vectors(
        self,
        collection: CollectionHandle,
        vectors: Sequence[VectorVersion],
        *,
        repair: bool,
    ) -> VectorCheck:
        """Reconcile, one page of vectors: the orphans (no live chunk of that
        incarnation); the stale ones, made from another text than their live
        chunk's, by the content hash they carry (an older version) or by the
        vector service's hash of the text it embedded (a forgery that copied
        the rest); and the unverified ones, without the latter hash. Stale
        and unverified chunks are queued for re-indexing when `repair`; the
        indexer then embeds their text again (`Indexer._records` reuses no
        vector whose text hash is not the chunk's), replacing the vector in
        place: deleting it first could race the background indexer and
        remove the new one."""

        def work(session: Session) -> VectorCheck:
            places = [v.place for v in vectors if v.place is not None]
            live = search_queries.live_chunks(session, collection.id, places)
            orphans: list[str] = []
            stale: list[int] = []
            unverified: list[int] = []
            for vector in vectors:
                chunk = live.get(vector.place) if vector.place is not None else None
                if chunk is None or chunk.incarnation != vector.incarnation:
                    orphans.append(vector.vector_id)
                elif chunk.state is IndexState.INDEXED:
                    # PENDING chunks are on their way already; only INDEXED
                    # ones claim a vector they do not have.
                    version = chunk.content_hash.startswith(vector.hash_prefix or "\0")
                    embedded = vector.text_hash
                    if not version or embedded not in (None, text_hash(chunk.text)):
                        stale.append(chunk.chunk_id)
                    elif embedded is None:
                        unverified.append(chunk.chunk_id)
            if repair:
                _requeue(session, [*stale, *unverified])
            return VectorCheck(orphans, len(stale), len(unverified))

        return (self._db.write if repair else self._db.read)(work)

    def indexed_chunks_after(
        self, collection: CollectionHandle, after: int, limit: int
    ) -> list[IndexedChunk]:
        """Reconcile's keyset scan of the chunks that claim a vector."""
        return self._db.read(
            lambda s: search_queries.indexed_chunks_after(s, collection.id, after, limit)
        )


def _repair_superseded(session: Session, stale: Sequence[ClaimedChunk], now: datetime) -> list[int]:
    """See Outbox.settle_chunks; returns the documents re-queued."""
    by_document: dict[int, list[ClaimedChunk]] = defaultdict(list)
    for chunk in stale:
        by_document[chunk.document_pk].append(chunk)
    current = outbox_queries.current_documents(session, by_document)
    again = [pk for pk, chunks in by_document.items() if current.get(pk) == chunks[0].incarnation]
    outbox_queries.requeue_documents(session, again, now)
    counts = outbox_queries.chunk_counts(session, again)
    removals = []
    sent_again = set(again)
    in_use: dict[str, bool] = {}  # one query per vector collection, not per document
    for pk, chunks in by_document.items():
        first = chunks[0]
        name = first.vector_collection
        if name not in in_use:
            in_use[name] = collection_queries.vector_collection_in_use(session, name)
        if not in_use[name]:
            continue  # dropped with its collection: all its vectors went
        if pk in sent_again:
            # A version that had more chunks: those past the current last one.
            beyond = [c for c in chunks if c.ordinal >= counts.get(pk, 0)]
            if not beyond:
                continue
            first_ordinal = min(c.ordinal for c in beyond)
        else:
            first_ordinal = 0  # the document is gone: every vector of that version
        removals.append(
            {
                **_DELETION_DEFAULTS,
                "vector_collection": first.vector_collection,
                "document_id": first.document_id,
                "incarnation": first.incarnation,
                "first_ordinal": first_ordinal,
                "max_generation": max(c.generation for c in chunks),
            }
        )
    outbox_queries.add_deletions(session, removals)
    return again


def _requeue(session: Session, chunk_ids: Collection[int]) -> None:
    """Back to PENDING and unleased, with their documents' states."""
    if chunk_ids:
        now = utcnow()
        outbox_queries.refresh_document_states(
            session, outbox_queries.requeue_chunks(session, chunk_ids, now), now
        )
