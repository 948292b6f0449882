"""The indexing pipeline: drains the outboxes (`outbox.py`, DESIGN.md §6) into
the vector service.

Work is leased (`lease_until`), so an ingest call that indexes its own chunks
and the background loop never send the same chunk at once, and the work of a
process that crashed is taken over when its lease runs out. An acknowledgement
is recorded only if the chunk still carries the lease it was sent under: a
document rewritten meanwhile keeps its new chunks PENDING.

Deletions name their vectors by incarnation (random per document row) and
generation, so one that runs late never removes the vectors of a newer
version or of a document created again under the same id.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from askmojo.common.filters import MetadataScalar
from askmojo.common.text_hash import TEXT_HASH_KEY, text_hash
from metadata_service.config import MetadataSettings
from metadata_service.db.engine import Database
from metadata_service.db.models import VectorDeletionRow
from metadata_service.db.outbox_queries import ClaimedChunk
from metadata_service.outbox import (
    HASH_KEY,
    INCARNATION_KEY,
    Outbox,
    deletion_filter,
    deletion_groups,
    vector_id,
    vector_metadata,
)
from metadata_service.vector_client import (
    VectorCollectionNotFound,
    VectorRecord,
    VectorServiceClient,
    VectorServiceError,
    VectorServiceUnavailable,
)

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class IndexingReport:
    """What one pass did (for logs, Reconcile and tests)."""

    indexed: int = 0
    failed: int = 0
    released: int = 0


class _CollectionDeleted(Exception):
    """The collection of the chunks being sent was deleted meanwhile."""


class _LeaseRenewal:
    """Keeps the chunks of a pass leased while it runs: every `interval`
    (INDEX_LEASE_SECONDS / 3) those still held under the current token move
    to a new one with a later expiry. The lease stays the claim's token: a
    settle must use the one the renewal ended with (`stop`), and a chunk
    rewritten or taken over meanwhile (another lease) is never touched."""

    def __init__(
        self,
        lease: datetime,
        renew: Callable[[datetime], Awaitable[datetime]],
        interval: float,
    ) -> None:
        self.lease = lease
        self._renew = renew
        self._interval = interval
        self._stopping = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval)
                return
            try:
                # Never cancelled mid-way (stop() waits for it): the new
                # token is known here once its write commits.
                self.lease = await self._renew(self.lease)
            except Exception:
                _LOGGER.warning("lease renewal failed; retrying", exc_info=True)

    def halt(self) -> None:
        """Ends the renewals (at their next step) without waiting."""
        self._stopping.set()

    async def stop(self) -> datetime:
        """Ends the renewals; returns the token the chunks are held under."""
        self._stopping.set()
        await self._task
        return self.lease


class Indexer:
    """Sends leased work to the vector service. Async (it runs on the gRPC
    event loop); database work goes to the service's thread pool."""

    def __init__(
        self,
        db: Database,
        client: VectorServiceClient,
        executor: ThreadPoolExecutor,
        settings: MetadataSettings,
    ) -> None:
        self._outbox = Outbox(db)
        # Leases are timed by the database's clock, which every replica
        # shares, never by this host's (db/clock.py).
        self._clock = db.clock
        self._client = client
        self._executor = executor
        self._settings = settings
        self._ensured: set[str] = set()  # vector collections known to exist
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        # Every lease this process handed out and not yet run out (a heap by
        # expiry): what a shutdown gives back.
        self._leases: list[datetime] = []

    # --- leases ------------------------------------------------------------

    def new_lease(self) -> datetime:
        """A lease expiry that doubles as the claim's token: the random
        microseconds keep two claims in the same instant apart. In the
        database's time (no query: the offset measured last), so replicas on
        hosts whose clocks disagree judge it alike."""
        now = self._clock.now()
        lease = now + timedelta(
            seconds=self._settings.index_lease_seconds,
            microseconds=random.randrange(1_000_000),
        )
        while self._leases and self._leases[0] < now:
            heapq.heappop(self._leases)  # ran out: nothing left to give back
        heapq.heappush(self._leases, lease)
        return lease

    async def give_back_leases(self) -> tuple[int, int]:
        """At shutdown, once no call or pass runs any more: every chunk and
        deletion row this process still holds becomes claimable now (PENDING,
        unleased) instead of after INDEX_LEASE_SECONDS. Returns how many
        chunks and deletion rows. Runs on a thread of its own: the service's
        pool may be shut down already."""
        leases, self._leases = list(self._leases), []
        return await asyncio.to_thread(self._outbox.give_back, leases)

    # --- sending -----------------------------------------------------------

    async def index_leased(self, lease: datetime, deadline: float) -> IndexingReport:
        """Sends every chunk held under `lease` through the vector service's
        UpsertStream (batches of INDEX_BATCH_RECORDS) and records the answers.
        On an outage the chunks not yet acknowledged are released (PENDING)
        and the error re-raised."""
        try:
            claimed = await self._db_call(self._outbox.claimed, lease)
        except asyncio.CancelledError:
            await self._release_lease(lease)
            raise
        chunks, metadata = claimed.chunks, claimed.metadata
        if not chunks:
            return IndexingReport()
        # The pass may outlast the lease (a slow vector service, a long
        # batch): kept alive meanwhile, or another indexer would take the
        # chunks over and send them again.
        renewal = _LeaseRenewal(lease, self._renew_lease, self._settings.index_lease_seconds / 3)
        try:
            return await self._send_held(renewal, chunks, metadata, deadline)
        finally:
            renewal.halt()  # whatever ended the pass (settles stopped it already)

    async def _send_held(
        self,
        renewal: _LeaseRenewal,
        chunks: Sequence[ClaimedChunk],
        metadata: dict[int, dict[str, MetadataScalar]],
        deadline: float,
    ) -> IndexingReport:
        """`index_leased`'s sending, under a lease `renewal` keeps alive;
        every settle first stops it and uses the token it ended with."""
        indexed: list[int] = []
        failed: dict[int, str] = {}
        released: list[int] = []
        truncated: list[int] = []

        async def settle() -> None:
            lease = await renewal.stop()
            sent = {c.chunk_id: c for c in chunks}
            await self._db_call(
                lambda: self._outbox.settle_chunks(
                    lease, indexed, failed, released, truncated, sent=sent
                )
            )

        try:
            by_collection: dict[str, list[ClaimedChunk]] = defaultdict(list)
            for chunk in chunks:
                by_collection[chunk.vector_collection].append(chunk)
            for name, group in by_collection.items():
                step = self._settings.index_batch_records
                try:
                    await self._ensure_collection(group[0], deadline)
                    batches = [
                        await self._records(name, group[start : start + step], metadata, deadline)
                        for start in range(0, len(group), step)
                    ]
                except _CollectionDeleted:
                    # Their rows went with it: nothing to send or settle.
                    released.extend(c.chunk_id for c in group)
                    continue
                chunk_of = {vector_id(c.document_id, c.ordinal): c.chunk_id for c in group}
                async for acks in self._client.upsert_stream(name, batches, deadline):
                    for ack in acks:
                        if ack.ok:
                            indexed.append(chunk_of[ack.id])
                            if ack.truncated:
                                truncated.append(chunk_of[ack.id])
                        elif ack.transient or ack.collection_missing:
                            if ack.collection_missing:
                                self._ensured.discard(name)  # re-created on the next pass
                            released.append(chunk_of[ack.id])
                        else:
                            failed[chunk_of[ack.id]] = ack.message
        except VectorServiceUnavailable:
            done = {*indexed, *failed, *released}
            released.extend(c.chunk_id for c in chunks if c.chunk_id not in done)
            await settle()
            raise
        except asyncio.CancelledError:
            # Shutdown or a client that went away: record what was
            # acknowledged and give the rest back now, instead of leaving it
            # leased (untouchable) until INDEX_LEASE_SECONDS pass.
            done = {*indexed, *failed, *released}
            released.extend(c.chunk_id for c in chunks if c.chunk_id not in done)
            await asyncio.shield(settle())
            raise
        except VectorServiceError as exc:
            # The vector service refused the whole request (e.g. the collection
            # exists there with another model): a per-chunk failure to report.
            done = {*indexed, *failed, *released}
            failed.update({c.chunk_id: str(exc) for c in chunks if c.chunk_id not in done})
        await settle()
        return IndexingReport(len(indexed), len(failed), len(released))

    async def _renew_lease(self, lease: datetime) -> datetime:
        """Moves the chunks still held under `lease` to a new one, a full
        INDEX_LEASE_SECONDS from now (recorded for a shutdown to give back);
        returns it."""
        renewed = self.new_lease()
        held = await self._db_call(self._outbox.renew_lease, lease, renewed)
        _LOGGER.debug("lease renewed", extra={"chunks": held})
        return renewed

    async def _records(
        self,
        collection: str,
        chunks: Sequence[ClaimedChunk],
        metadata: dict[int, dict[str, MetadataScalar]],
        deadline: float,
    ) -> list[VectorRecord]:
        """The records to upsert: a chunk whose vector is already stored for
        this very content (a metadata-only change, a replay after a crash)
        sends that vector back with its new metadata instead of its text, so
        unchanged content is never embedded again. Only a vector the vector
        service recorded embedding from this very text (TEXT_HASH_KEY) is
        reused: one forged under copied metadata, or stored before that hash
        existed, is embedded again (what Reconcile's repair relies on)."""
        ids = [vector_id(c.document_id, c.ordinal) for c in chunks]
        try:
            stored = await self._client.get(collection, ids, deadline, vectors=True)
        except VectorCollectionNotFound:
            # Dropped behind our back (or a vector store rebuilt from nothing):
            # the database is the source of truth, so create it again.
            self._ensured.discard(collection)
            await self._ensure_collection(chunks[0], deadline)
            stored = {}
        records = []
        for vid, chunk in zip(ids, chunks, strict=True):
            meta = vector_metadata(chunk, metadata[chunk.document_pk])
            old = stored.get(vid)
            same_content = (
                old is not None
                and old.vector is not None
                and old.metadata.get(INCARNATION_KEY) == chunk.incarnation
                and old.metadata.get(HASH_KEY) == meta[HASH_KEY]
                and old.metadata.get(TEXT_HASH_KEY) == text_hash(chunk.text)
            )
            if same_content and old is not None:
                records.append(VectorRecord(vid, None, meta, vector=old.vector))
            else:
                records.append(VectorRecord(vid, chunk.text, meta))
        return records

    async def _ensure_collection(self, chunk: ClaimedChunk, deadline: float) -> None:
        """Creates the chunk's vector collection unless known to exist.
        Raises _CollectionDeleted (having dropped what it made) when its
        collection was deleted meanwhile.

        The collection may be deleted (by another call, worker or replica)
        after its chunks were claimed, and its vector collection dropped just
        before this creates it again: nothing would ever drop that one (the
        deletion is done), an orphan Reconcile cannot see. A deletion drops
        the vector collection only after it commits, so checked after the
        creation, either that drop comes later or the deletion shows here."""
        name = chunk.vector_collection
        if name in self._ensured:
            return
        await self._client.ensure_collection(name, chunk.dimension, chunk.model, deadline)
        if not await self._db_call(self._outbox.vector_collection_in_use, name):
            _LOGGER.info("collection deleted while indexing; its vectors dropped again")
            await self._client.drop_collection(name, deadline)
            raise _CollectionDeleted(name)
        self._ensured.add(name)

    async def delete_pending(self, deadline: float, lease: datetime | None = None) -> int:
        """Runs the deletion outbox: the rows held under `lease` (a delete
        call's own), else a batch claimed from those nobody holds. Returns how
        many rows it completed."""
        if lease is not None:
            rows = await self._db_call(self._outbox.leased_deletions, lease)
        else:
            claim = self.new_lease()
            rows = await self._claim(
                lambda: self._outbox.claim_deletions(claim, self._settings.index_batch_records),
                lambda rows: self._settle_deletions(rows, [], "interrupted"),
            )
        done: list[int] = []
        error: Exception | None = None
        try:
            for group in deletion_groups(rows, self._settings.delete_batch_documents):
                first = group[0]
                try:
                    if first.document_id is None:
                        await self._client.drop_collection(first.vector_collection, deadline)
                        self._ensured.discard(first.vector_collection)
                    else:
                        await self._client.delete(
                            first.vector_collection, deletion_filter(group), deadline
                        )
                except (VectorServiceUnavailable, VectorServiceError) as exc:
                    error = exc
                    break
                done.extend(row.id for row in group)
        except asyncio.CancelledError:
            # Shutdown mid-way: as for chunks, record what was done and give
            # the rest back at once.
            await asyncio.shield(self._settle_deletions(rows, done, "interrupted"))
            raise
        # A shutdown arriving now must not drop the write that gives the
        # failed rows back (queued work is cancelled with its future): they
        # would wait INDEX_LEASE_SECONDS for the next start.
        settling = asyncio.ensure_future(self._settle_deletions(rows, done, str(error)))
        try:
            await asyncio.shield(settling)
        except asyncio.CancelledError:
            await settling
            raise
        if error is not None:
            raise error
        return len(done)

    async def _settle_deletions(
        self, rows: Sequence[VectorDeletionRow], done: Collection[int], error: str
    ) -> None:
        """Records the `done` rows of those claimed as finished and gives the
        others back with `error`."""
        await self._db_call(self._outbox.settle_deletions, rows, done, error)

    async def drain_once(self, deadline: float) -> IndexingReport:
        """One pass of the background loop: deletions first, then one leased
        batch of PENDING chunks."""
        # Off the loop, on the passes' schedule: keeps the database clock's
        # offset fresh in every process that hands out leases.
        await self._db_call(self._clock.refresh_if_due)
        await self.delete_pending(deadline)
        lease = self.new_lease()
        claimed = await self._claim(
            lambda: self._outbox.claim_chunks(lease, self._settings.index_batch_records),
            lambda _: self._release_lease(lease),
        )
        if not claimed:
            return IndexingReport()
        return await self.index_leased(lease, deadline)

    async def _claim(self, claim: Callable[[], T], give_back: Callable[[T], Awaitable[None]]) -> T:
        """Runs the write that takes a lease on work. Cancelled meanwhile (a
        shutdown), the claim commits in its thread all the same: wait for it
        and give the work back now, or nobody may take it for
        INDEX_LEASE_SECONDS."""
        claiming = asyncio.ensure_future(self._db_call(claim))
        try:
            return await asyncio.shield(claiming)
        except asyncio.CancelledError:
            await give_back(await claiming)
            raise

    async def _release_lease(self, lease: datetime) -> None:
        """Gives back at once every chunk still held under `lease`, rather
        than leaving it untouchable until INDEX_LEASE_SECONDS pass."""
        await asyncio.shield(self._db_call(self._outbox.release_lease, lease))

    # --- the background loop ---------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="indexer")

    async def stop(self, finish_by: asyncio.Event | None = None) -> None:
        """Starts no new pass; the one running may finish until `finish_by`
        is set (at once without it), then is cancelled (its work given
        back)."""
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is None:
            return
        if finish_by is not None and not task.done():
            hurried = asyncio.ensure_future(finish_by.wait())
            await asyncio.wait({task, hurried}, return_when=asyncio.FIRST_COMPLETED)
            hurried.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def wake(self) -> None:
        """New work exists (or the vector service may be back): drain now."""
        self._wake.set()

    async def _run(self) -> None:
        """Resumes PENDING work at start-up and whenever woken; polls at
        INDEX_POLL_SECONDS, backing off while the vector service is down."""
        backoff = 0.0
        while not self._stopping:
            try:
                report = await self.drain_once(time.monotonic() + self._settings.index_call_timeout)
                backoff = 0.0
                if report.indexed or report.failed or report.released:
                    _LOGGER.info(
                        "indexed pending chunks",
                        extra={"indexed": report.indexed, "failed": report.failed},
                    )
                    continue  # more may wait: no sleep between full batches
            except VectorServiceUnavailable as exc:
                backoff = min(max(backoff * 2, 0.5), self._settings.index_max_backoff)
                _LOGGER.warning(
                    "vector service unavailable; retrying in %.1fs: %s", backoff, exc.detail
                )
            except VectorServiceError as exc:
                backoff = self._settings.index_max_backoff
                _LOGGER.error("vector service refused deletions; retrying later: %s", exc)
            except asyncio.CancelledError:
                raise
            except Exception:
                backoff = self._settings.index_max_backoff
                _LOGGER.exception("indexing pass failed; retrying later")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), backoff or self._settings.index_poll_seconds
                )

    async def _db_call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
