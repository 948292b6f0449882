"""The vector service's service layer: input rules, embeddings through the
batcher, records into the store. Free of gRPC types; store calls (blocking)
go to a bounded thread pool so the event loop never waits on Chroma."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from askmojo.common.echo import quoted
from askmojo.common.filters import FilterNode, InvalidFilterError, MetadataScalar, check_metadata
from askmojo.common.names import COLLECTION_NAME_RULE, is_valid_collection_name
from askmojo.common.text_hash import SERVICE_SET_KEYS, TEXT_HASH_KEY, text_hash
from vector_service.config import VectorSettings
from vector_service.embedding.batcher import DynamicBatcher
from vector_service.embedding.worker import BatchResult
from vector_service.errors import FailedPrecondition, InvalidArgument
from vector_service.paging import decode_page_token, encode_page_token, query_fingerprint
from vector_service.store import CollectionInfo, Match, Stored, VectorStore, to_where

T = TypeVar("T")
# The metadata service's rule for document ids (validation.py), which vector
# ids are made from: no control characters.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Longer than any valid collection name (63): checked before the name rule so
# a huge name is refused without being matched.
_MAX_NAME_CHARS = 64


@dataclass(frozen=True)
class ModelDescription:
    name: str
    dimension: int
    max_sequence_length: int


@dataclass(frozen=True)
class RecordInput:
    """A record as the client sent it: exactly one of text and vector."""

    id: str
    text: str | None
    vector: Sequence[float] | None
    metadata: Mapping[str, MetadataScalar | None]


@dataclass(frozen=True)
class RecordOutcome:
    id: str
    error: BaseException | None = None
    # Its text was longer than the model's window: only the start was embedded.
    truncated: bool = False


@dataclass(frozen=True)
class TextsOutcome:
    """Texts embedded one by one: `result` holds the embeddings of the texts
    without an error, in order; `errors` why the others got none."""

    count: int
    result: BatchResult | None
    errors: Mapping[int, BaseException]


class Embedder:
    def __init__(
        self, batcher: DynamicBatcher, model: ModelDescription, settings: VectorSettings
    ) -> None:
        self._batcher = batcher
        self.model = model
        self._settings = settings

    def check_texts(self, texts: Sequence[str], field: str = "texts") -> list[str]:
        if not texts:
            raise InvalidArgument(field, "send at least one text")
        limit = self._settings.max_texts_per_call
        if len(texts) > limit:
            raise InvalidArgument(
                field, f"{len(texts)} texts; the limit is {limit} per call (MAX_TEXTS_PER_CALL)"
            )
        for index, text in enumerate(texts):
            self.check_text(text, f"{field}[{index}]")
        return list(texts)

    def check_text(self, text: str, field: str) -> str:
        if not text:
            raise InvalidArgument(field, "text is empty: there is nothing to embed")
        longest = self._settings.max_text_length
        if len(text) > longest:
            raise InvalidArgument(
                field,
                f"text is {len(text)} characters; the limit is {longest} (MAX_TEXT_LENGTH). "
                f"The model reads only its first {self.model.max_sequence_length} tokens: "
                "split long texts into chunks",
            )
        return text

    async def embed(self, texts: Sequence[str], *, wait: bool) -> BatchResult:
        """`wait=False` (unary calls) fails at once when the queue is full;
        `wait=True` (streams) waits for room."""
        return await self._batcher.embed(self.check_texts(texts), wait=wait)

    async def embed_one(self, text: str, field: str, *, wait: bool) -> np.ndarray:
        """The vector of one text that came in the caller's own `field` (a
        Query's `query_text`): a refusal names that field, not the
        embedding calls' `texts[0]`."""
        result = await self._batcher.embed([self.check_text(text, field)], wait=wait)
        return np.asarray(result.vectors[0])

    async def embed_each(self, texts: Sequence[str], *, wait: bool) -> TextsOutcome:
        """As `embed`, but a bad text fails alone: the call itself is refused
        only when it is empty or over MAX_TEXTS_PER_CALL."""
        if not texts:
            raise InvalidArgument("texts", "send at least one text")
        limit = self._settings.max_texts_per_call
        if len(texts) > limit:
            raise InvalidArgument(
                "texts", f"{len(texts)} texts; the limit is {limit} per call (MAX_TEXTS_PER_CALL)"
            )
        errors: dict[int, BaseException] = {}
        good: list[str] = []
        for index, text in enumerate(texts):
            try:
                good.append(self.check_text(text, f"texts[{index}]"))
            except InvalidArgument as exc:
                errors[index] = exc
        result = await self._batcher.embed(good, wait=wait) if good else None
        return TextsOutcome(len(texts), result, errors)

    async def embed_checked(
        self, texts: Sequence[str], *, wait: bool
    ) -> tuple[np.ndarray, list[bool]]:
        """Vectors (and whether each text was truncated) for texts already
        checked one by one (record text fields), however many: an Upsert may
        carry more records than one Embed call may carry texts, so they go to
        the batcher in slices of the per-call limit, all queued at once so
        the batcher can coalesce them."""
        step = self._settings.max_texts_per_call
        slices = [list(texts[i : i + step]) for i in range(0, len(texts), step)]
        tasks = [asyncio.ensure_future(self._batcher.embed(s, wait=wait)) for s in slices]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:  # one slice failed: the others must not stay queued
                task.cancel()
            raise
        return np.concatenate([r.vectors for r in results]), [
            cut for r in results for cut in r.truncated
        ]


@dataclasses.dataclass(frozen=True)
class StoreExecutors:
    """Threads for Chroma calls. Writes are serialised by the store's lock
    anyway, so they get one thread of their own: queued writes (a bulk
    ingest) then never hold the threads a search's query needs."""

    reads: ThreadPoolExecutor
    writes: ThreadPoolExecutor

    @classmethod
    def create(cls, read_threads: int) -> StoreExecutors:
        return cls(
            ThreadPoolExecutor(read_threads, thread_name_prefix="chroma-read"),
            ThreadPoolExecutor(1, thread_name_prefix="chroma-write"),
        )

    def shutdown(self) -> None:
        for executor in (self.writes, self.reads):
            executor.shutdown(wait=True, cancel_futures=True)


class Index:
    def __init__(
        self,
        store: VectorStore,
        embedder: Embedder,
        executors: StoreExecutors,
        settings: VectorSettings,
    ) -> None:
        self._store = store
        self._embedder = embedder
        self._executors = executors
        self._settings = settings

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """A Chroma read, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executors.reads, functools.partial(fn, *args))

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """A Chroma write, off the event loop, on the one writer thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executors.writes, functools.partial(fn, *args))

    def _name(self, name: str, field: str = "collection") -> str:
        if len(name) > _MAX_NAME_CHARS or not is_valid_collection_name(name):
            raise InvalidArgument(
                field, f"collection name {quoted(name)} is invalid: {COLLECTION_NAME_RULE}"
            )
        return name

    def _record_id(self, record_id: str, field: str) -> str:
        """The metadata service's document-id rule, with room for the
        "#<ordinal>" it appends (MAX_RECORD_ID_BYTES)."""
        if not record_id:
            raise InvalidArgument(field, "record id must not be empty")
        size = len(record_id.encode())
        limit = self._settings.max_record_id_bytes
        if size > limit:
            raise InvalidArgument(
                field, f"record id is {size} bytes; the limit is {limit} (MAX_RECORD_ID_BYTES)"
            )
        if _CONTROL.search(record_id):
            raise InvalidArgument(field, "record id must not contain control characters")
        return record_id

    def _ids(self, ids: Sequence[str]) -> list[str]:
        limit = self._settings.max_ids_per_call
        if len(ids) > limit:
            raise InvalidArgument(
                "ids", f"{len(ids)} ids; the limit is {limit} per call (MAX_IDS_PER_CALL)"
            )
        return [self._record_id(i, f"ids[{n}]") for n, i in enumerate(ids)]

    async def ensure_collection(self, name: str, dimension: int, model: str) -> CollectionInfo:
        self._name(name, "name")
        served = self._embedder.model
        if dimension < 0:
            raise InvalidArgument("dimension", "must be positive (0 means the served model's)")
        return await self._write(
            self._store.ensure_collection,
            name,
            dimension or served.dimension,
            model or served.name,
        )

    async def drop_collection(self, name: str) -> bool:
        return await self._write(self._store.drop_collection, self._name(name, "name"))

    async def upsert(
        self, collection: str, records: Sequence[RecordInput], *, wait: bool
    ) -> list[RecordOutcome]:
        """Per-record outcomes in order; an invalid record never fails the rest."""
        self._name(collection)
        if not records:
            raise InvalidArgument("records", "send at least one record")
        if len(records) > self._settings.max_records_per_call:
            raise InvalidArgument(
                "records",
                f"{len(records)} records; the limit is {self._settings.max_records_per_call}",
            )
        info = await self._run(self._store.collection, collection)
        errors: dict[int, BaseException] = {}
        valid: list[tuple[int, RecordInput, dict[str, MetadataScalar]]] = []
        seen: set[str] = set()
        truncated: set[int] = set()  # indexes of records whose text was cut
        for index, record in enumerate(records):
            try:
                metadata = self._check_record(record, index, info, seen)
                valid.append((index, record, metadata))
            except (InvalidArgument, FailedPrecondition) as exc:
                errors[index] = exc
        if valid:
            vectors = np.zeros((len(valid), info.dimension), dtype=np.float32)
            to_embed: list[tuple[int, str]] = [
                (row, r.text) for row, (_, r, _) in enumerate(valid) if r.text is not None
            ]
            for row, (_, record, _) in enumerate(valid):
                if record.vector is not None:
                    vectors[row] = np.asarray(record.vector, dtype=np.float32)
            if to_embed:
                embedded, cut = await self._embedder.embed_checked(
                    [t for _, t in to_embed], wait=wait
                )
                vectors[[row for row, _ in to_embed]] = embedded
                truncated = {valid[row][0] for (row, _), c in zip(to_embed, cut, strict=True) if c}
            for _, record, metadata in valid:
                if record.text is not None:
                    metadata[TEXT_HASH_KEY] = text_hash(record.text)
            await self._write(
                self._store_records,
                collection,
                [r.id for _, r, _ in valid],
                vectors,
                [m for _, _, m in valid],
                [row for row, (_, r, _) in enumerate(valid) if r.vector is not None],
            )
        return [
            RecordOutcome(r.id, errors.get(i), truncated=i in truncated)
            for i, r in enumerate(records)
        ]

    def _store_records(
        self,
        collection: str,
        ids: list[str],
        vectors: np.ndarray,
        metadatas: list[dict[str, MetadataScalar]],
        raw: list[int],
    ) -> None:
        """Stores the records (on the writer thread: no other write comes
        between the read and the upsert). A record sent as a raw vector
        carries no text hash, unless that vector is exactly the one stored
        under its id, embedded here from text: then it still is that text's
        embedding, and keeps the hash (the metadata service re-sends a
        stored vector with new metadata when only the metadata changed)."""
        if raw:
            stored = {s.id: s for s in self._store.get(collection, [ids[row] for row in raw], True)}
            for row in raw:
                old = stored.get(ids[row])
                recorded = old.metadata.get(TEXT_HASH_KEY) if old is not None else None
                if (
                    old is not None
                    and isinstance(recorded, str)
                    and old.vector is not None
                    and np.array_equal(old.vector, vectors[row])
                ):
                    metadatas[row][TEXT_HASH_KEY] = recorded
        self._store.upsert(collection, ids, vectors, metadatas)

    def _check_record(
        self, record: RecordInput, index: int, info: CollectionInfo, seen: set[str]
    ) -> dict[str, MetadataScalar]:
        dimension = info.dimension
        field = f"records[{index}]"
        self._record_id(record.id, f"{field}.id")
        if record.id in seen:
            raise InvalidArgument(
                f"{field}.id", f"id {quoted(record.id)} appears twice in this call"
            )
        seen.add(record.id)
        if (record.text is None) == (record.vector is None):
            raise InvalidArgument(field, "set exactly one of text and vector")
        if record.text is not None:
            self._embedder.check_text(record.text, f"{field}.text")
            served = self._embedder.model
            # Vectors of another model (or size) would sit among the
            # collection's own and make its scores meaningless.
            if info.dimension != served.dimension or (info.model and info.model != served.name):
                raise FailedPrecondition(
                    f"{field}.text cannot be embedded here: collection {info.name!r} holds "
                    f"{info.model or 'unnamed'} vectors of dimension {info.dimension}, this "
                    f"service embeds with {served.name} ({served.dimension}); send vectors instead"
                )
        if record.vector is not None:
            if len(record.vector) != dimension:
                raise FailedPrecondition(
                    f"{field}.vector has {len(record.vector)} values; the collection has "
                    f"dimension {dimension}"
                )
            if not np.isfinite(np.asarray(record.vector, dtype=np.float32)).all():
                raise InvalidArgument(f"{field}.vector", "values must be finite numbers")
        if TEXT_HASH_KEY in record.metadata:
            raise InvalidArgument(
                f"{field}.metadata[{quoted(TEXT_HASH_KEY)}]",
                f"{TEXT_HASH_KEY} is set by the vector service itself (a hash of the text it "
                "embedded); leave it out",
            )
        allowed = self._settings.max_metadata_keys - SERVICE_SET_KEYS
        if len(record.metadata) > allowed:
            raise InvalidArgument(
                f"{field}.metadata",
                f"{len(record.metadata)} metadata keys; the limit is {allowed} "
                f"(MAX_METADATA_KEYS, {self._settings.max_metadata_keys}, less the "
                f"{SERVICE_SET_KEYS} the service sets itself)",
            )
        try:
            return check_metadata(
                record.metadata,
                max_keys=allowed,
                max_string_bytes=self._settings.max_metadata_string_bytes,
                field=f"{field}.metadata",
            )
        except InvalidFilterError as exc:
            raise InvalidArgument(exc.field, exc.description) from None

    async def query(
        self,
        collection: str,
        text: str | None,
        vector: Sequence[float] | None,
        top_k: int,
        where: FilterNode | None,
    ) -> list[Match]:
        self._name(collection)
        if not 1 <= top_k <= self._settings.max_top_k:
            raise InvalidArgument("top_k", f"must be between 1 and {self._settings.max_top_k}")
        embedded_by = None
        if text is not None:
            query_vector = await self._embedder.embed_one(text, "query_text", wait=False)
            embedded_by = self._embedder.model.name
        elif vector is not None:
            query_vector = np.asarray(vector, dtype=np.float32)
            if not np.isfinite(query_vector).all():
                raise InvalidArgument("query_vector", "values must be finite numbers")
        else:
            raise InvalidArgument("query_text", "set query_text or query_vector")
        return await self._run(
            self._store.query, collection, query_vector, top_k, where, embedded_by
        )

    async def get(self, collection: str, ids: Sequence[str], include_vectors: bool) -> list[Stored]:
        self._name(collection)
        if not ids:
            raise InvalidArgument("ids", "send at least one id")
        return await self._run(self._store.get, collection, self._ids(ids), include_vectors)

    async def delete(self, collection: str, ids: Sequence[str], where: FilterNode | None) -> int:
        self._name(collection)
        if bool(ids) == (where is not None):
            raise InvalidArgument("ids", "give either ids or filter (exactly one)")
        return await self._write(self._store.delete, collection, self._ids(ids), where)

    async def count(self, collection: str) -> int:
        return await self._run(self._store.count, self._name(collection))

    async def list_ids(
        self, collection: str, page_size: int, page_token: str, where: FilterNode | None
    ) -> tuple[list[str], str]:
        """Keyset paging: a token holds the last id of its page (store.py
        says how a page is found), so deletions between pages move nothing."""
        self._name(collection)
        if page_size < 0:
            raise InvalidArgument("page_size", "must not be negative")
        size = min(page_size or 1000, self._settings.max_page_size)
        fingerprint = query_fingerprint(
            collection, json.dumps(to_where(where), sort_keys=True) if where is not None else None
        )
        after = decode_page_token(page_token, fingerprint)
        ids, more = await self._run(self._store.list_ids, collection, after, size, where)
        return ids, (encode_page_token(ids[-1], fingerprint) if more and ids else "")
