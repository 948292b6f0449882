"""The blocking clients: `Client` (metadata service) and `VectorClient`
(vector and embedding services)."""

from __future__ import annotations

import builtins
import collections
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import grpc

from askmojo.client import _convert as convert
from askmojo.client import types as t
from askmojo.client._channel import (
    DEFAULT,
    DEFAULT_RETRY,
    DEFAULT_TIMEOUT,
    EMBEDDING_SERVICE,
    METADATA_SERVICE,
    VECTOR_SERVICE,
    RetryPolicy,
    Timeout,
    channel_options,
    metadata_address,
    pick_timeout,
    resolve_target,
    security,
    vector_address,
)
from askmojo.client.errors import AlreadyExists, InvalidArgument, Violation, error_from_rpc
from askmojo.client.filters import Where, compile_where
from askmojo.common.channels import open_channel
from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from askmojo.vector.v1 import embedding_service_pb2 as epb
from askmojo.vector.v1 import embedding_service_pb2_grpc as epb_grpc
from askmojo.vector.v1 import vector_service_pb2 as vpb
from askmojo.vector.v1 import vector_service_pb2_grpc as vpb_grpc

_R = TypeVar("_R")

#: Documents per request of `upsert` (the service takes up to 1000).
UPSERT_BATCH = 100
#: Documents per stream message of `ingest`.
INGEST_BATCH = 64
#: Batches of `ingest` sent and not yet answered.
INGEST_IN_FLIGHT = 4
#: Text bytes per stream message: well under the services' 64 MiB messages.
MAX_BATCH_BYTES = 16 * 1024 * 1024
#: Texts per Embed call (the service takes up to max_texts_per_call, 512).
EMBED_BATCH = 128
#: Records per vector Upsert call.
RECORD_BATCH = 256


class _Window:
    """At most `size` batches in flight: the request thread takes a slot per
    batch sent, the caller's thread gives one back per answer."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._cond = threading.Condition()
        self._free = size
        self._closed = False

    def take(self) -> bool:
        with self._cond:
            self._cond.wait_for(lambda: self._free > 0 or self._closed)
            if self._closed:
                return False
            self._free -= 1
            return True

    def give(self) -> None:
        with self._cond:
            self._free += 1
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class _Base:
    def __init__(
        self,
        address: str,
        services: Sequence[str],
        *,
        api_key: str | None,
        ca_file: str | None,
        cert_file: str | None,
        key_file: str | None,
        timeout: float | None,
        retry: RetryPolicy,
        options: Sequence[tuple[str, Any]],
    ) -> None:
        self.address = address
        self.timeout = timeout
        target = resolve_target(address)
        self._channel: grpc.Channel = open_channel(
            target[0],
            security(api_key, ca_file, cert_file, key_file),
            options=channel_options(target, retry, services, options),
        )

    def _call(self, method: Callable[..., _R], request: object, timeout: Timeout) -> _R:
        try:
            return method(request, timeout=pick_timeout(timeout, self.timeout))
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc

    def close(self) -> None:
        """Closes the channel; calls in progress are cancelled."""
        self._channel.close()

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_Self = TypeVar("_Self", bound=_Base)


class Client(_Base):
    """A blocking client of the metadata service (collections, documents,
    search). Thread-safe; one per process is plenty.

    `address`: HOST:PORT, several comma-separated (calls are balanced
    round-robin over them), or any gRPC target (`dns:///metadata:50051`);
    default ASKMOJO_ADDRESS, METADATA_ADDRESS, then localhost:50051.
    `api_key` defaults to ASKMOJO_API_KEY; `ca_file` turns TLS on,
    `cert_file`/`key_file` add a client certificate (mTLS). `timeout`: seconds
    per call (None: no deadline), overridable on each call. `retry`: gRPC's
    retry policy for the idempotent calls (`NO_RETRIES` turns it off).
    `options`: extra gRPC channel options.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        api_key: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        retry: RetryPolicy = DEFAULT_RETRY,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        super().__init__(
            metadata_address(address),
            [METADATA_SERVICE],
            api_key=api_key,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            timeout=timeout,
            retry=retry,
            options=options,
        )
        self._stub = pb_grpc.MetadataServiceStub(self._channel)

    # --- collections -----------------------------------------------------------

    def create_collection(
        self,
        name: str,
        *,
        description: str = "",
        model: str = "",
        dimension: int = 0,
        chunk_size: int = 0,
        chunk_overlap: int = 0,
        timeout: Timeout = DEFAULT,
    ) -> t.Collection:
        """Creates a collection (`AlreadyExists` if the name is taken). Empty
        or 0 arguments take the service's defaults (model, dimension,
        chunking). Not retried: see `get_or_create_collection`."""
        request = convert.create_collection_request(
            name=name,
            description=description,
            model=model,
            dimension=dimension,
            chunk_size=chunk_size,
            chunk_overlap=chunk_overlap,
        )
        return convert.collection(self._call(self._stub.CreateCollection, request, timeout))

    def get_or_create_collection(
        self, name: str, *, description: str = "", timeout: Timeout = DEFAULT
    ) -> t.Collection:
        """The collection, created with the service's defaults if missing."""
        try:
            return self.create_collection(name, description=description, timeout=timeout)
        except AlreadyExists:
            return self.collection(name, timeout=timeout)

    def collection(self, name: str, *, timeout: Timeout = DEFAULT) -> t.Collection:
        """One collection with its counts (`NotFound` if there is none)."""
        request = pb.GetCollectionRequest(name=name)
        return convert.collection(self._call(self._stub.GetCollection, request, timeout))

    def collections(self, *, timeout: Timeout = DEFAULT) -> builtins.list[t.Collection]:
        """Every collection, by name (all pages; `timeout` is per page)."""
        found: builtins.list[t.Collection] = []
        token = ""
        while True:
            page = self._call(
                self._stub.ListCollections, pb.ListCollectionsRequest(page_token=token), timeout
            )
            found.extend(convert.collection(c) for c in page.collections)
            if not page.next_page_token or page.next_page_token == token:
                return found
            token = page.next_page_token

    def delete_collection(self, name: str, *, timeout: Timeout = DEFAULT) -> t.CollectionDeleted:
        """Deletes a collection with its documents, chunks and vectors."""
        reply = self._call(
            self._stub.DeleteCollection, pb.DeleteCollectionRequest(name=name), timeout
        )
        return t.CollectionDeleted(reply.deleted_documents, reply.deleted_chunks)

    # --- documents ---------------------------------------------------------------

    def upsert(
        self,
        collection: str,
        documents: Iterable[t.DocumentLike],
        *,
        batch_size: int = UPSERT_BATCH,
        timeout: Timeout = DEFAULT,
    ) -> builtins.list[t.UpsertResult]:
        """Creates or replaces documents (`Document`s or dicts with id, text,
        metadata), `batch_size` per call; one result per document, in order.
        A bad document fails alone (its result says why); an unchanged one
        is reported UNCHANGED and re-embeds nothing. `timeout` is per call."""
        results: builtins.list[t.UpsertResult] = []
        for batch in convert.batches(documents, min(batch_size, 1000), 2**62):
            answered: builtins.list[t.UpsertResult] = []
            if batch.documents:
                request = pb.UpsertDocumentsRequest(
                    collection=collection, documents=batch.documents
                )
                reply = self._call(self._stub.UpsertDocuments, request, timeout)
                answered = convert.batch_results(reply.results, None, batch.ids)
            results.extend(batch.in_order(answered))
        return results

    def ingest(
        self,
        collection: str,
        documents: Iterable[t.DocumentLike],
        *,
        batch_size: int = INGEST_BATCH,
        max_in_flight: int = INGEST_IN_FLIGHT,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        timeout: float | None = None,
    ) -> Iterator[t.UpsertResult]:
        """Streams documents over one IngestDocuments stream and yields each
        document's result, in order, as its batch is acknowledged.

        `documents` is read lazily (on gRPC's sending thread) in batches of
        `batch_size` documents / `max_batch_bytes` bytes of text; at most
        `max_in_flight` batches wait for an answer, so a slow service slows
        the reading instead of growing memory. A document that cannot be
        sent (a bad metadata type) gets a FAILED result in its place; an
        exception raised by `documents` itself ends the stream and is
        re-raised here. `timeout` bounds the whole stream (default: none).
        Stop iterating (or close the generator) to cancel the stream.
        """
        window = _Window(max_in_flight)
        sent: collections.deque[convert.Batch] = collections.deque()
        leftover: builtins.list[t.UpsertResult] = []
        failed: builtins.list[BaseException] = []

        def requests() -> Iterator[pb.IngestDocumentsRequest]:
            try:
                for batch in convert.batches(documents, batch_size, max_batch_bytes):
                    if not batch.documents:  # only the very last batch can be
                        leftover.extend(batch.in_order([]))
                        continue
                    if not window.take():
                        return
                    sent.append(batch)  # before it leaves: its answer always finds it
                    yield pb.IngestDocumentsRequest(
                        collection=collection, documents=batch.documents
                    )
            except Exception as exc:
                # Ends the stream cleanly (what was sent is still answered);
                # the caller's thread raises it.
                failed.append(exc)

        call = self._stub.IngestDocuments(requests(), timeout=timeout)
        try:
            for response in call:
                batch = sent.popleft()
                window.give()
                answered = convert.batch_results(response.results, response.status, batch.ids)
                yield from batch.in_order(answered)
                if failed:
                    raise failed[0]
        except grpc.RpcError as exc:
            if failed:
                raise failed[0] from None
            raise error_from_rpc(exc) from exc
        finally:
            window.close()
            call.cancel()  # a no-op once the stream has ended
        if failed:
            raise failed[0]
        yield from leftover

    def get(self, collection: str, id: str, *, timeout: Timeout = DEFAULT) -> t.StoredDocument:
        """One document, text included (`NotFound` if there is none)."""
        request = pb.GetDocumentRequest(collection=collection, id=id, view=pb.DOCUMENT_VIEW_FULL)
        return convert.stored_document(self._call(self._stub.GetDocument, request, timeout), True)

    def list(
        self,
        collection: str,
        *,
        where: Where | None = None,
        states: Sequence[t.DocumentState | str] = (),
        include_text: bool = False,
        page_size: int = 0,
        timeout: Timeout = DEFAULT,
    ) -> Iterator[t.StoredDocument]:
        """Every matching document, by id, fetched a page at a time as you
        iterate (`page_size` 0: the service's default; `timeout` per page).
        `states` keeps documents in those states only (e.g. ["failed"])."""
        request = _list_request(collection, where, states, include_text, page_size)
        return self._pages(request, include_text, timeout)

    def _pages(
        self, request: pb.ListDocumentsRequest, include_text: bool, timeout: Timeout
    ) -> Iterator[t.StoredDocument]:
        while True:
            page = self._call(self._stub.ListDocuments, request, timeout)
            for document in page.documents:
                yield convert.stored_document(document, include_text)
            if not page.next_page_token or page.next_page_token == request.page_token:
                return
            request.page_token = page.next_page_token

    def delete(
        self,
        collection: str,
        ids: Sequence[str] | None = None,
        *,
        where: Where | None = None,
        timeout: Timeout = DEFAULT,
    ) -> t.DeleteResult:
        """Deletes documents by `ids` or by `where` (exactly one), with their
        chunks and vectors."""
        request = convert.delete_request(collection, ids, compile_where(where))
        reply = self._call(self._stub.DeleteDocuments, request, timeout)
        return t.DeleteResult(reply.deleted_count, builtins.list(reply.not_found_ids))

    def search(
        self,
        collection: str,
        query: str,
        *,
        top_k: int = 10,
        where: Where | None = None,
        mode: t.SearchMode | str | None = None,
        dense_weight: float | None = None,
        keyword_weight: float | None = None,
        timeout: Timeout = DEFAULT,
    ) -> t.SearchResults:
        """The `top_k` chunks best matching `query`, best first, among the
        documents `where` matches. `mode`: "hybrid" (the default: keyword
        index and dense vectors fused by reciprocal rank, each list weighted
        by `dense_weight` / `keyword_weight`, 1 unless given), "dense" or
        "keyword". The result is a list with `degraded` set when HYBRID
        answered from the keyword index alone (vector service unavailable)."""
        request = _search_request(
            collection,
            query,
            top_k,
            where,
            mode=mode,
            dense_weight=dense_weight,
            keyword_weight=keyword_weight,
        )
        return convert.search_results(self._call(self._stub.Search, request, timeout))

    def reconcile(
        self, collection: str, *, dry_run: bool = False, timeout: Timeout = DEFAULT
    ) -> t.ReconcileReport:
        """Compares the database with the vector index and repairs drift
        (with `dry_run`, only reports it)."""
        request = pb.ReconcileRequest(collection=collection, dry_run=dry_run)
        return convert.reconcile_report(self._call(self._stub.Reconcile, request, timeout))

    def stats(self, collection: str | None = None, *, timeout: Timeout = DEFAULT) -> t.Stats:
        """Documents by state, chunks, database and pool (of one collection,
        or all)."""
        request = pb.GetStatsRequest(collection=collection or "")
        return convert.stats(self._call(self._stub.GetStats, request, timeout))


def _list_request(
    collection: str,
    where: Where | None,
    states: Sequence[t.DocumentState | str],
    include_text: bool,
    page_size: int,
) -> pb.ListDocumentsRequest:
    request = pb.ListDocumentsRequest(
        collection=collection,
        page_size=page_size,
        view=pb.DOCUMENT_VIEW_FULL if include_text else pb.DOCUMENT_VIEW_BASIC,
    )
    for i, state in enumerate(states):
        try:
            request.states.append(convert.STATE_TO_PROTO[t.DocumentState(state)])
        except (ValueError, KeyError):
            description = "a state is one of pending, indexed, failed"
            raise InvalidArgument(
                f"states[{i}]: {description}", violations=[Violation(f"states[{i}]", description)]
            ) from None
    proto = compile_where(where)
    if proto is not None:
        request.filter.CopyFrom(proto)
    return request


def _search_request(
    collection: str,
    query: str,
    top_k: int,
    where: Where | None,
    *,
    mode: t.SearchMode | str | None = None,
    dense_weight: float | None = None,
    keyword_weight: float | None = None,
) -> pb.SearchRequest:
    request = pb.SearchRequest(
        collection=collection, query=query, top_k=top_k, mode=convert.search_mode(mode)
    )
    if dense_weight is not None:
        request.dense_weight = dense_weight
    if keyword_weight is not None:
        request.keyword_weight = keyword_weight
    proto = compile_where(where)
    if proto is not None:
        request.filter.CopyFrom(proto)
    return request


class VectorClient(_Base):
    """A blocking client of the vector service: embeddings, and records in
    vector collections (below the metadata service: its collections' vectors
    live in `Collection.vector_collection`). Same options as `Client`;
    `address` defaults to ASKMOJO_VECTOR_ADDRESS, VECTOR_SERVICE_ADDRESS, then
    localhost:50052."""

    def __init__(
        self,
        address: str | None = None,
        *,
        api_key: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        retry: RetryPolicy = DEFAULT_RETRY,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        super().__init__(
            vector_address(address),
            [VECTOR_SERVICE, EMBEDDING_SERVICE],
            api_key=api_key,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            timeout=timeout,
            retry=retry,
            options=options,
        )
        self._vectors = vpb_grpc.VectorServiceStub(self._channel)
        self._embeddings = epb_grpc.EmbeddingServiceStub(self._channel)

    # --- embeddings ---------------------------------------------------------------

    def embed(
        self, texts: Sequence[str], *, batch_size: int = EMBED_BATCH, timeout: Timeout = DEFAULT
    ) -> builtins.list[builtins.list[float]]:
        """One L2-normalised vector per text, in order (`batch_size` texts per
        call; `timeout` per call)."""
        vectors: builtins.list[builtins.list[float]] = []
        for chunk in _chunks(_texts(texts), batch_size):
            reply = self._call(self._embeddings.Embed, epb.EmbedRequest(texts=chunk), timeout)
            vectors.extend(builtins.list(e.values) for e in reply.embeddings)
        return vectors

    def model_info(self, *, timeout: Timeout = DEFAULT) -> t.ModelInfo:
        """The embedding model, its dimension and the service's limits."""
        reply = self._call(self._embeddings.GetModelInfo, epb.GetModelInfoRequest(), timeout)
        return convert.model_info(reply)

    # --- collections and records --------------------------------------------------------

    def ensure_collection(
        self, name: str, *, dimension: int = 0, model: str = "", timeout: Timeout = DEFAULT
    ) -> t.VectorCollectionInfo:
        """Creates the collection if missing (0 / "": the served model's
        dimension and id); `FailedPrecondition` if it exists with others."""
        request = vpb.EnsureCollectionRequest(name=name, dimension=dimension, model=model)
        reply = self._call(self._vectors.EnsureCollection, request, timeout)
        return t.VectorCollectionInfo(reply.name, reply.dimension, reply.model, reply.created)

    def drop_collection(self, name: str, *, timeout: Timeout = DEFAULT) -> bool:
        """Drops a collection; False if there was none."""
        reply = self._call(
            self._vectors.DropCollection, vpb.DropCollectionRequest(name=name), timeout
        )
        return bool(reply.dropped)

    def upsert(
        self,
        collection: str,
        records: Iterable[t.RecordLike],
        *,
        batch_size: int = RECORD_BATCH,
        timeout: Timeout = DEFAULT,
    ) -> builtins.list[t.RecordResult]:
        """Inserts or replaces records (`VectorRecord`s or dicts with id, text
        or vector, metadata); one result per record, in order."""
        results: builtins.list[t.RecordResult] = []
        for chunk in _chunks(builtins.list(records), batch_size):
            request = vpb.UpsertRequest(
                collection=collection,
                records=[convert.record_to_proto(r, f"records[{i}]") for i, r in enumerate(chunk)],
            )
            reply = self._call(self._vectors.Upsert, request, timeout)
            results.extend(convert.record_result(r) for r in reply.results)
        return results

    def query(
        self,
        collection: str,
        text: str | None = None,
        *,
        vector: Sequence[float] | None = None,
        top_k: int = 10,
        where: Where | None = None,
        timeout: Timeout = DEFAULT,
    ) -> builtins.list[t.Match]:
        """The `top_k` nearest records to `text` or `vector` (exactly one),
        best first, among those `where` matches."""
        request = _query_request(collection, text, vector, top_k, where)
        reply = self._call(self._vectors.Query, request, timeout)
        return [convert.match(m) for m in reply.matches]

    def get(
        self,
        collection: str,
        ids: Sequence[str],
        *,
        include_vectors: bool = False,
        timeout: Timeout = DEFAULT,
    ) -> builtins.list[t.StoredRecord]:
        """The records of `ids` that exist (missing ones are simply absent)."""
        request = vpb.GetRequest(
            collection=collection, ids=_ids(ids), include_vectors=include_vectors
        )
        reply = self._call(self._vectors.Get, request, timeout)
        return [convert.stored_record(r) for r in reply.records]

    def delete(
        self,
        collection: str,
        ids: Sequence[str] | None = None,
        *,
        where: Where | None = None,
        timeout: Timeout = DEFAULT,
    ) -> int:
        """Deletes records by `ids` or by `where` (exactly one); how many went."""
        request = _vector_delete_request(collection, ids, where)
        return int(self._call(self._vectors.Delete, request, timeout).deleted_count)

    def count(self, collection: str, *, timeout: Timeout = DEFAULT) -> int:
        """Records in the collection."""
        reply = self._call(self._vectors.Count, vpb.CountRequest(collection=collection), timeout)
        return int(reply.count)

    def list_ids(
        self,
        collection: str,
        *,
        where: Where | None = None,
        page_size: int = 0,
        timeout: Timeout = DEFAULT,
    ) -> Iterator[str]:
        """Every matching record id, ascending, a page at a time as you iterate."""
        request = vpb.ListIdsRequest(collection=collection, page_size=page_size)
        proto = compile_where(where)
        if proto is not None:
            request.filter.CopyFrom(proto)
        return self._id_pages(request, timeout)

    def _id_pages(self, request: vpb.ListIdsRequest, timeout: Timeout) -> Iterator[str]:
        while True:
            page = self._call(self._vectors.ListIds, request, timeout)
            yield from page.ids
            if not page.next_page_token or page.next_page_token == request.page_token:
                return
            request.page_token = page.next_page_token


def _texts(texts: Sequence[str]) -> builtins.list[str]:
    if isinstance(texts, str):
        raise InvalidArgument(
            "texts: a list of texts, not one string",
            violations=[Violation("texts", "a list of texts, not one string")],
        )
    return builtins.list(texts)


def _ids(ids: Sequence[str]) -> builtins.list[str]:
    if isinstance(ids, str):
        raise InvalidArgument(
            "ids: a list of ids, not one string",
            violations=[Violation("ids", "a list of ids, not one string")],
        )
    return builtins.list(ids)


def _chunks(items: Sequence[_R], size: int) -> Iterator[builtins.list[_R]]:
    if size < 1:
        raise ValueError("batch_size must be at least 1")
    for start in range(0, len(items), size):
        yield builtins.list(items[start : start + size])


def _query_request(
    collection: str,
    text: str | None,
    vector: Sequence[float] | None,
    top_k: int,
    where: Where | None,
) -> vpb.QueryRequest:
    if (text is None) == (vector is None):
        raise InvalidArgument(
            "query: give exactly one of text and vector",
            violations=[Violation("query", "give exactly one of text and vector")],
        )
    request = vpb.QueryRequest(collection=collection, top_k=top_k)
    if text is not None:
        request.query_text = text
    else:
        request.query_vector.values.extend(convert.vector_values(vector, "vector"))
    proto = compile_where(where)
    if proto is not None:
        request.filter.CopyFrom(proto)
    return request


def _vector_delete_request(
    collection: str, ids: Sequence[str] | None, where: Where | None
) -> vpb.DeleteRequest:
    proto = compile_where(where)
    convert.check_ids_or_filter(ids, proto)
    request = vpb.DeleteRequest(collection=collection, ids=builtins.list(ids or ()))
    if proto is not None:
        request.filter.CopyFrom(proto)
    return request
