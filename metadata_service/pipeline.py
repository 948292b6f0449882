"""The RPCs that span both stores: writes that index their own documents,
deletes that take their vectors along, Search and Reconcile.

Async (it waits on the vector service); every database step is a `Catalog`
(the writes and deletes) or `Outbox` (indexing state, Search's join,
Reconcile's checks) call run on the thread pool: one transaction each. Each
method takes the absolute deadline (time.monotonic()) of the call it serves,
and passes it down to the vector service.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

import grpc

from askmojo.common.filters import FilterNode
from askmojo.common.shutdown import Shutdown
from askmojo.common.streams import in_order
from askmojo.common.text_hash import TEXT_HASH_KEY
from metadata_service import metrics
from metadata_service.catalog import Catalog
from metadata_service.config import RECONCILE_PAGE_IDS, MetadataSettings
from metadata_service.db.collection_queries import CollectionHandle
from metadata_service.domain import (
    DeleteCollectionOutcome,
    DeleteDocumentsOutcome,
    DocumentInput,
    IndexState,
    ReconcileOutcome,
    SearchHit,
    SearchMode,
    SearchOptions,
    SearchResult,
    UpsertOutcome,
    UpsertState,
)
from metadata_service.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    IndexingFailed,
    InvalidArgument,
    MetadataError,
    NotFound,
)
from metadata_service.fusion import (
    KEYWORD_FLOOR,
    above_floor,
    fusion_fetch,
    reciprocal_rank_fusion,
)
from metadata_service.indexing import Indexer
from metadata_service.outbox import (
    DOC_KEY,
    HASH_KEY,
    INCARNATION_KEY,
    ChunkPlace,
    IndexingState,
    Outbox,
    SearchCandidates,
    VectorVersion,
    parse_vector_id,
    vector_id,
)
from metadata_service.vector_client import (
    VectorCollectionNotFound,
    VectorMatch,
    VectorServiceClient,
    VectorServiceError,
    VectorServiceUnavailable,
)

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_TOP_K = 10
_HYBRID = SearchOptions()
# Of what is left of a call when its batch is written, indexing leaves this
# much (at least _ANSWER_MARGIN_MIN seconds) to settle the batch, read its
# states and send the answer.
_ANSWER_MARGIN_SHARE = 0.1
_ANSWER_MARGIN_MIN = 0.5


class ShuttingDown(MetadataError):
    """The service is stopping: what was acknowledged is stored."""

    code = grpc.StatusCode.UNAVAILABLE


@dataclasses.dataclass(frozen=True)
class IngestBatch:
    """One IngestDocuments request: its collection and documents."""

    collection: str
    documents: Sequence[DocumentInput]


class Pipeline:
    def __init__(
        self,
        catalog: Catalog,
        outbox: Outbox,
        executor: ThreadPoolExecutor,
        settings: MetadataSettings,
        *,
        indexer: Indexer | None,
        client: VectorServiceClient | None,
        shutdown: Shutdown | None = None,
    ) -> None:
        # Never set when none is given (tests building a pipeline alone).
        self._shutdown = shutdown or Shutdown(settings.shutdown_grace_seconds)
        self._catalog = catalog
        self._outbox = outbox
        self._executor = executor
        self._settings = settings
        self._indexer = indexer
        self._client = client

    # --- writes ------------------------------------------------------------------

    async def upsert_documents(
        self, collection: str, documents: Sequence[DocumentInput], deadline: float
    ) -> list[UpsertOutcome]:
        lease = self._indexer.new_lease() if self._indexer else None
        outcomes = await self._db(self._catalog.upsert_documents, collection, documents, lease)
        return await self._index_written(collection, outcomes, lease, deadline)

    async def ingest_stream(
        self, batches: AsyncIterator[IngestBatch], deadline: float
    ) -> AsyncIterator[tuple[list[UpsertOutcome], MetadataError | None]]:
        """Each batch's outcomes (or why it was refused as a whole), in
        order. Batches are written one after another in stream order (a
        document sent twice ends as its last version) and indexed up to
        INGEST_BATCHES_IN_FLIGHT at once, so the vector service embeds one
        batch while the next is written and the last answer goes out.

        `deadline` is the stream's own (math.inf when the client set none):
        a stream lasts as long as the client sends, so each batch gets its
        own indexing budget, INDEX_ON_WRITE_TIMEOUT from when it was written,
        capped by `deadline`; a budget counted from the stream's start would
        leave the batches of a long ingest PENDING."""
        written_in_order = asyncio.Lock()  # FIFO: batches take it in stream order

        async def ingest(batch: IngestBatch) -> tuple[list[UpsertOutcome], MetadataError | None]:
            lease = self._indexer.new_lease() if self._indexer else None
            async with written_in_order:
                outcomes, refused = await self._db(
                    self._catalog.ingest_batch, batch.collection, batch.documents, lease
                )
            if refused is not None:
                return outcomes, refused
            return await self._index_written(batch.collection, outcomes, lease, deadline), None

        # A stop reads no further batch: those read are written, answered
        # (indexing cut short when the grace runs out), then the stream ends
        # UNAVAILABLE, so the client knows to resend the rest.
        cut = False

        def stopped_reading() -> None:
            nonlocal cut
            cut = True

        depth = self._settings.ingest_batches_in_flight
        source = self._shutdown.until_draining(batches, stopped_reading)
        async for _, result in in_order(source, ingest, depth):
            if isinstance(result, Exception):
                raise result
            yield result
        if cut:
            raise ShuttingDown(
                "the service is shutting down; resend what was not acknowledged "
                "(every acknowledged document is stored)"
            )

    async def _index_written(
        self,
        collection: str,
        outcomes: list[UpsertOutcome],
        lease: datetime | None,
        deadline: float,
    ) -> list[UpsertOutcome]:
        """Indexes the chunks this call wrote (held under its lease) and
        reports each document as it ended: INDEXED, FAILED, or still PENDING
        when the vector service is away or the budget ran out (the background
        loop takes over). The budget starts now, when the batch is written,
        and ends early enough for the answer to reach the caller in time."""
        written = [o.id for o in outcomes if o.state is UpsertState.PENDING]
        if self._indexer is None or lease is None or not written:
            return outcomes
        now = time.monotonic()
        limit = min(_answer_by(deadline, now), now + self._settings.index_on_write_timeout)
        try:
            # A stop whose grace runs out cuts indexing short (the chunks not
            # acknowledged are given back, PENDING) so the answer goes out.
            finished, _ = await self._shutdown.unless_hurried(
                self._indexer.index_leased(lease, limit)
            )
            if not finished:
                _LOGGER.info("indexing cut short by shutdown; documents stay PENDING")
        except VectorServiceUnavailable as exc:
            # Away, or the budget ran out (its unacknowledged chunks are
            # released): what was acknowledged before still reports INDEXED.
            _LOGGER.warning("indexing deferred: %s", exc.detail)
            self._indexer.wake()
        try:
            states = await self._db(self._outbox.document_states, collection, written)
        except NotFound:
            # The collection was deleted (by another call, worker or replica)
            # after this batch was written: the batch was stored, and the
            # delete that came after took it; each document is answered as it
            # was written, not the whole stream ended NOT_FOUND.
            _LOGGER.info("collection deleted after a batch was written into it")
            return outcomes
        return [_with_state(o, states.get(o.id)) for o in outcomes]

    async def delete_documents(
        self, collection: str, ids: Sequence[str], where: FilterNode | None, deadline: float
    ) -> DeleteDocumentsOutcome:
        if where is None or ids:  # by ids (MAX_BATCH_DOCUMENTS at most), or refused
            lease = self._indexer.new_lease() if self._indexer else None
            outcome = await self._db(self._catalog.delete_documents, collection, ids, where, lease)
            await self._delete_vectors_now(lease, deadline)
            return outcome
        return await self._delete_matching(collection, where, deadline)

    async def _delete_matching(
        self, collection: str, where: FilterNode, deadline: float
    ) -> DeleteDocumentsOutcome:
        """A delete by filter, DELETE_BATCH_DOCUMENTS at a time: each batch's
        rows go with their deletion outbox in one transaction, then its
        vectors in one call, so neither memory nor the number of vector
        calls grows with the number of matching documents. Once the vector
        service fails, the remaining batches leave their vectors to the
        background loop."""
        deleted = 0
        cursor = None
        vectors_now = self._indexer is not None
        # Stop early enough that "send it again" reaches the caller, not a
        # bare DEADLINE_EXCEEDED from gRPC.
        stop = _answer_by(deadline, time.monotonic())
        while True:
            if time.monotonic() >= stop:
                raise DeadlineExceeded(
                    f"deleted {deleted} documents before the deadline; send the same request "
                    "again to delete the rest"
                )
            lease = self._indexer.new_lease() if self._indexer and vectors_now else None
            batch = await self._db(self._catalog.delete_matching, collection, where, lease, cursor)
            deleted += batch.deleted
            vectors_now = await self._delete_vectors_now(lease, stop) and vectors_now
            if batch.cursor is None:
                return DeleteDocumentsOutcome(deleted)
            cursor = batch.cursor

    async def delete_collection(self, name: str, deadline: float) -> DeleteCollectionOutcome:
        lease = self._indexer.new_lease() if self._indexer else None
        outcome = await self._db(self._catalog.delete_collection, name, lease)
        await self._delete_vectors_now(lease, deadline)
        return outcome

    async def _delete_vectors_now(self, lease: datetime | None, deadline: float) -> bool:
        """The rows are gone and the vectors' removal is recorded under this
        call's lease; carry it out now so the caller sees a clean index (the
        background loop cannot take it meanwhile), else it retries later.
        False if it failed (left to the background loop)."""
        if self._indexer is None or lease is None:
            return True
        try:
            await self._indexer.delete_pending(deadline, lease)
        except Exception as exc:  # recorded; retried by the background loop
            _LOGGER.warning("vector deletion deferred: %s", getattr(exc, "detail", exc))
            self._indexer.wake()
            return False
        return True

    # --- search --------------------------------------------------------------------

    async def search(
        self,
        collection: str,
        query: str,
        top_k: int,
        where: FilterNode | None,
        deadline: float,
        *,
        options: SearchOptions = _HYBRID,
    ) -> SearchResult:
        """The `top_k` best chunks by the mode's retrievers: DENSE (the vector
        service), KEYWORD (the keyword index, in this database) or HYBRID
        (both, fused by reciprocal rank). HYBRID without the vector service
        answers from the keyword index alone, marked degraded."""
        if not query.strip():
            raise InvalidArgument("query", "the query is empty: send some text to search for")
        size = len(query.encode())
        if size > self._settings.max_query_bytes:
            # Checked here, in the caller's terms: the vector service would
            # refuse it in its own (query_text, MAX_TEXT_LENGTH).
            raise InvalidArgument(
                "query",
                f"the query is {size} bytes; the limit is {self._settings.max_query_bytes} "
                "(MAX_QUERY_BYTES): the model reads only the first few hundred words",
            )
        limit = self._settings.max_search_top_k
        if top_k < 0 or top_k > limit:
            raise InvalidArgument("top_k", f"must be between 1 and {limit} (0 means 10)")
        top_k = top_k or DEFAULT_TOP_K
        mode = options.mode
        if mode is SearchMode.DENSE:
            self._require_client()
        target = await self._db(self._outbox.collection, collection)
        if mode is SearchMode.DENSE:
            # The filter runs inside the index (no "top k, then filter"
            # loss). A few extra candidates cover vectors the join drops:
            # leftovers of deleted or rewritten documents not yet cleaned up.
            fetch = min(limit, top_k + max(4, top_k // 4))
        else:
            # Each retriever's list goes deeper than top_k (fusion.py).
            fetch = fusion_fetch(top_k, limit)
        keyed: list[tuple[VectorVersion, VectorMatch]] = []
        degraded = ""
        if mode is not SearchMode.KEYWORD and self._client is None:
            degraded = (
                "keyword results only: no vector service is configured "
                "(VECTOR_SERVICE_ADDRESS is empty)"
            )
        elif mode is not SearchMode.KEYWORD:
            try:
                keyed = await self._dense_matches(target, query, fetch, where, deadline)
            except VectorServiceUnavailable as exc:
                if mode is SearchMode.DENSE:
                    raise
                degraded = "keyword results only: the vector service is unavailable"
                # Info, not warning: every search says it while the outage lasts
                # (the indexer warns about the outage itself).
                _LOGGER.info("search degraded to keyword only: %s", exc.detail)
        candidates = await self._db(
            self._outbox.search_candidates,
            target,
            [version for version, _ in keyed],
            where,
            query if mode is not SearchMode.DENSE else "",
            fetch,
        )
        hits = _fuse(keyed, candidates, options, top_k)
        return SearchResult(hits, degraded=bool(degraded), degraded_reason=degraded)

    async def _dense_matches(
        self,
        target: CollectionHandle,
        query: str,
        fetch: int,
        where: FilterNode | None,
        deadline: float,
    ) -> list[tuple[VectorVersion, VectorMatch]]:
        """The vector service's matches, best first, with the chunk version
        each claims to be (those not ours dropped)."""
        client = self._require_client()
        try:
            matches = await client.query(target.vector_collection, query, fetch, where, deadline)
        except VectorCollectionNotFound:
            return []  # nothing indexed yet
        except VectorServiceUnavailable as exc:
            raise VectorServiceUnavailable(
                exc.detail, "search needs the vector service, which is unavailable; try again"
            ) from None
        except VectorServiceError as exc:
            if exc.code is grpc.StatusCode.INVALID_ARGUMENT:
                raise _search_argument_error(exc) from None
            raise
        keyed = []
        for match in matches:
            parsed = parse_vector_id(match.id)
            incarnation = match.metadata.get(INCARNATION_KEY)
            hash_prefix = match.metadata.get(HASH_KEY)
            if parsed and isinstance(incarnation, int) and isinstance(hash_prefix, str):
                keyed.append((VectorVersion(match.id, parsed, incarnation, hash_prefix), match))
        return keyed

    # --- reconcile -------------------------------------------------------------------

    async def reconcile(self, collection: str, dry_run: bool, deadline: float) -> ReconcileOutcome:
        """Compares both stores page by page and repairs unless `dry_run`:
        orphan vectors are deleted, stale and missing ones re-queued, PENDING
        and FAILED work sent again (as far as the deadline allows; the
        background loop finishes the rest)."""
        try:
            return await self._reconcile(collection, dry_run, deadline)
        except VectorServiceUnavailable as exc:
            raise VectorServiceUnavailable(
                exc.detail, "reconcile needs the vector service, which is unavailable; try again"
            ) from None

    async def _reconcile(self, collection: str, dry_run: bool, deadline: float) -> ReconcileOutcome:
        client = self._require_client()
        indexer = self._indexer
        assert indexer is not None
        repair = not dry_run
        target = await self._db(self._outbox.collection, collection)
        if repair:
            await indexer.delete_pending(deadline)  # recorded deletions first
        orphans, stale, unverified, exists = await self._scan_vectors(
            client, target, repair, deadline
        )
        missing = await self._scan_missing(client, target, repair, deadline)
        unfinished = await self._db(self._outbox.resume_unfinished, target, repair=repair)
        if repair:
            if orphans:
                for start in range(0, len(orphans), RECONCILE_PAGE_IDS):
                    part = orphans[start : start + RECONCILE_PAGE_IDS]
                    await client.delete_ids(target.vector_collection, part, deadline)
            await self._drain_collection(target, deadline)
            metrics.reconciled(
                orphan=len(orphans), stale=stale + unverified, missing=missing, resumed=unfinished
            )
        outcome = ReconcileOutcome(
            missing_vectors=missing,
            orphan_vectors=len(orphans),
            stale_vectors=stale,
            unverified_vectors=unverified,
            pending_resumed=unfinished,
            dry_run=dry_run,
            # Chunks say INDEXED, but there is no collection to hold them.
            vector_collection_missing=not exists and missing > 0,
        )
        if outcome.vector_collection_missing:
            _LOGGER.warning(
                "the vector collection is missing while chunks say INDEXED%s",
                "" if dry_run else "; re-indexing them",
                extra={"collection": collection, "missing_vectors": missing},
            )
        _LOGGER.info("reconciled", extra={"collection": collection, **dataclasses.asdict(outcome)})
        return outcome

    async def _scan_vectors(
        self, client: VectorServiceClient, target: CollectionHandle, repair: bool, deadline: float
    ) -> tuple[list[str], int, int, bool]:
        """Orphan vector ids, the counts of stale and unverified vectors, and
        whether the vector collection exists at all."""
        orphans: list[str] = []
        stale = unverified = 0
        token = ""
        while True:
            try:
                ids, token = await client.list_ids(
                    target.vector_collection, token, RECONCILE_PAGE_IDS, deadline
                )
            except VectorCollectionNotFound:
                return [], 0, 0, False  # no vector collection: nothing can be orphaned
            if not ids:
                break
            stored = await client.get(target.vector_collection, ids, deadline)
            page = []
            for vid in ids:
                meta = stored[vid].metadata if vid in stored else {}
                incarnation = meta.get(INCARNATION_KEY)
                hash_prefix = meta.get(HASH_KEY)
                embedded = meta.get(TEXT_HASH_KEY)
                page.append(
                    VectorVersion(
                        vid,
                        parse_vector_id(vid) if isinstance(meta.get(DOC_KEY), str) else None,
                        incarnation if isinstance(incarnation, int) else None,
                        hash_prefix if isinstance(hash_prefix, str) else None,
                        embedded if isinstance(embedded, str) else None,
                    )
                )
            checked = await self._db(self._outbox.check_vectors, target, page, repair=repair)
            orphans.extend(checked.orphans)
            stale += checked.stale
            unverified += checked.unverified
            if not token:
                break
        return orphans, stale, unverified, True

    async def _scan_missing(
        self, client: VectorServiceClient, target: CollectionHandle, repair: bool, deadline: float
    ) -> int:
        missing = 0
        after = 0
        while True:
            rows = await self._db(
                self._outbox.indexed_chunks_after, target, after, RECONCILE_PAGE_IDS
            )
            if not rows:
                return missing
            after = rows[-1].chunk_id
            ids = {vector_id(row.document_id, row.ordinal): row.chunk_id for row in rows}
            try:
                present = await client.get(target.vector_collection, list(ids), deadline)
            except VectorCollectionNotFound:
                present = {}
            absent = [chunk_id for vid, chunk_id in ids.items() if vid not in present]
            missing += len(absent)
            if repair and absent:
                await self._db(self._outbox.requeue_chunks, absent)

    async def _drain_collection(self, target: CollectionHandle, deadline: float) -> None:
        """Indexes the collection's PENDING chunks. Chunks another indexer
        holds (the background loop may claim re-queued work first) are
        waited for, within the call's deadline and INDEX_ON_WRITE_TIMEOUT,
        so a repair is done when Reconcile answers."""
        indexer = self._indexer
        assert indexer is not None
        limit = min(deadline - 0.5, time.monotonic() + self._settings.index_on_write_timeout)
        while time.monotonic() < limit:
            lease = indexer.new_lease()
            claimed = await self._db(
                self._outbox.claim_chunks, lease, self._settings.index_batch_records, target
            )
            if claimed:
                await indexer.index_leased(lease, deadline)
            elif await self._db(self._outbox.chunks_held_by_others, target):
                await asyncio.sleep(0.1)
            else:
                return

    # --- helpers -----------------------------------------------------------------

    def _require_client(self) -> VectorServiceClient:
        if self._client is None:
            raise FailedPrecondition(
                "no vector service is configured (VECTOR_SERVICE_ADDRESS is empty)"
            )
        return self._client

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))


# The vector service's Query fields, as the caller of Search knows them.
_SEARCH_FIELDS = {"query_text": "query", "top_k": "top_k", "filter": "filter"}


def _search_argument_error(exc: VectorServiceError) -> InvalidArgument:
    """A refusal of the vector service's Query, said in Search's terms: the
    caller sent `query` and `filter`, not `query_text`."""
    field, description = exc.violations[0] if exc.violations else ("query", str(exc))
    head = field.split(".", 1)[0].split("[", 1)[0]
    rest = field[len(head) :]
    ours = _SEARCH_FIELDS.get(head, "query")
    if ours == "filter":
        ours += rest  # the same filter tree on both sides: keep the path
    return InvalidArgument(ours, f"refused by the vector service: {description}")


def _answer_by(deadline: float, now: float) -> float:
    """When work on a call's behalf must stop for its answer to reach the
    caller before `deadline`: a 1,000-document batch indexed to the last
    instant of a 30 s deadline left its PENDING answers nowhere to go (the
    client saw DEADLINE_EXCEEDED). math.inf (a stream without a deadline)
    stays math.inf."""
    if math.isinf(deadline):
        return deadline
    return deadline - max(_ANSWER_MARGIN_MIN, _ANSWER_MARGIN_SHARE * (deadline - now))


def _with_state(outcome: UpsertOutcome, state: IndexingState | None) -> UpsertOutcome:
    if outcome.state is not UpsertState.PENDING or state is None:
        return outcome
    outcome = dataclasses.replace(outcome, truncated_chunks=state.truncated_chunks)
    if state.state is IndexState.INDEXED:
        return dataclasses.replace(outcome, state=UpsertState.INDEXED)
    if state.state is IndexState.FAILED:
        return dataclasses.replace(
            outcome,
            state=UpsertState.FAILED,
            error=IndexingFailed(f"stored, but not indexed: {state.error or 'unknown error'}"),
        )
    return outcome


def _fuse(
    keyed: Sequence[tuple[VectorVersion, VectorMatch]],
    candidates: SearchCandidates,
    options: SearchOptions,
    top_k: int,
) -> list[SearchHit]:
    """The top_k chunks by the mode's ordering, each with both retrievers'
    ranks and scores. Ranks count live chunks only: a leftover vector the
    join dropped takes no rank."""
    dense: dict[ChunkPlace, tuple[int, float]] = {}
    for version, match in keyed:
        place = version.place
        if place is not None and place in candidates.dense and place not in dense:
            dense[place] = (len(dense) + 1, match.score)
    keyword: dict[ChunkPlace, tuple[int, float]] = {}
    for hit in candidates.keyword:
        place = ChunkPlace(hit.document_id, hit.ordinal)
        if place in candidates.keyword_text and place not in keyword:
            keyword[place] = (len(keyword) + 1, hit.score)
    if options.mode is SearchMode.DENSE:
        ordered = [(place, score) for place, (_, score) in dense.items()]
    elif options.mode is SearchMode.KEYWORD:
        ordered = [(place, score) for place, (_, score) in keyword.items()]
    else:
        # Keyword hits far weaker than the best one (only common words
        # matched) take no part: their ranks would weigh as much as a
        # strong match's (fusion.above_floor). They keep their keyword rank
        # and score on the hit.
        scored = [(place, score) for place, (_, score) in keyword.items()]
        voters = above_floor(scored, KEYWORD_FLOOR)
        pairs = ((list(dense), options.dense_weight), (voters, options.keyword_weight))
        lists = [(found, weight) for found, weight in pairs if weight > 0]
        ordered = reciprocal_rank_fusion(lists)
    hits = []
    for place, score in ordered[:top_k]:
        live = candidates.dense.get(place) or candidates.keyword_text[place]
        dense_rank, dense_score = dense.get(place, (0, 0.0))
        keyword_rank, keyword_score = keyword.get(place, (0, 0.0))
        hits.append(
            SearchHit(
                place.document_id,
                vector_id(*place),
                score,
                live.text,
                live.metadata,
                dense_rank=dense_rank,
                dense_score=dense_score,
                keyword_rank=keyword_rank,
                keyword_score=keyword_score,
            )
        )
    return hits
