# ruff: noqa: ASYNC109  (`timeout=` is the per-call gRPC deadline, as on the blocking clients)
"""The asyncio clients (grpc.aio): `AsyncClient` and `AsyncVectorClient`,
method for method the blocking ones."""

from __future__ import annotations

import asyncio
import builtins
import collections
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
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
from askmojo.client._sync import (
    EMBED_BATCH,
    INGEST_BATCH,
    INGEST_IN_FLIGHT,
    MAX_BATCH_BYTES,
    RECORD_BATCH,
    UPSERT_BATCH,
    _chunks,
    _ids,
    _list_request,
    _query_request,
    _search_request,
    _texts,
    _vector_delete_request,
)
from askmojo.client.errors import AlreadyExists, error_from_rpc
from askmojo.client.filters import Where, compile_where
from askmojo.common.channels import ClientSecurity, open_aio_channel
from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from askmojo.vector.v1 import embedding_service_pb2 as epb
from askmojo.vector.v1 import embedding_service_pb2_grpc as epb_grpc
from askmojo.vector.v1 import vector_service_pb2 as vpb
from askmojo.vector.v1 import vector_service_pb2_grpc as vpb_grpc

_R = TypeVar("_R")


class _AsyncBase:
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
        self._target = target[0]
        self._security: ClientSecurity = security(api_key, ca_file, cert_file, key_file)
        self._options = channel_options(target, retry, services, options)
        self._open: grpc.aio.Channel | None = None

    def _channel(self) -> grpc.aio.Channel:
        # Opened on first use, inside the event loop that will use it (a
        # grpc.aio channel is bound to one loop), so a client may be made
        # anywhere, e.g. at import time.
        if self._open is None:
            self._open = open_aio_channel(self._target, self._security, self._options)
            self._made_stubs(self._open)
        return self._open

    def _made_stubs(self, channel: grpc.aio.Channel) -> None:
        raise NotImplementedError

    async def _call(
        self, method: Callable[[], Callable[..., Awaitable[_R]]], request: object, timeout: Timeout
    ) -> _R:
        self._channel()
        try:
            return await method()(request, timeout=pick_timeout(timeout, self.timeout))
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from exc

    async def close(self) -> None:
        """Closes the channel; calls in progress are cancelled."""
        if self._open is not None:
            channel, self._open = self._open, None
            await channel.close()

    async def __aenter__(self: _Self) -> _Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


_Self = TypeVar("_Self", bound=_AsyncBase)


class AsyncClient(_AsyncBase):
    """The asyncio twin of `Client` (same arguments, same methods, awaited;
    `ingest` and `list` are async iterators). Use it from one event loop."""

    _stub: pb_grpc.MetadataServiceStub

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

    def _made_stubs(self, channel: grpc.aio.Channel) -> None:
        self._stub = pb_grpc.MetadataServiceStub(channel)

    # --- collections -----------------------------------------------------------

    async def create_collection(
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
        """See `Client.create_collection`."""
        request = convert.create_collection_request(
            name=name,
            description=description,
            model=model,
            dimension=dimension,
            chunk_size=chunk_size,
            chunk_overlap=chunk_overlap,
        )
        reply = await self._call(lambda: self._stub.CreateCollection, request, timeout)
        return convert.collection(reply)

    async def get_or_create_collection(
        self, name: str, *, description: str = "", timeout: Timeout = DEFAULT
    ) -> t.Collection:
        """See `Client.get_or_create_collection`."""
        try:
            return await self.create_collection(name, description=description, timeout=timeout)
        except AlreadyExists:
            return await self.collection(name, timeout=timeout)

    async def collection(self, name: str, *, timeout: Timeout = DEFAULT) -> t.Collection:
        """See `Client.collection`."""
        request = pb.GetCollectionRequest(name=name)
        return convert.collection(
            await self._call(lambda: self._stub.GetCollection, request, timeout)
        )

    async def collections(self, *, timeout: Timeout = DEFAULT) -> builtins.list[t.Collection]:
        """See `Client.collections`."""
        found: builtins.list[t.Collection] = []
        token = ""
        while True:
            page = await self._call(
                lambda: self._stub.ListCollections,
                pb.ListCollectionsRequest(page_token=token),
                timeout,
            )
            found.extend(convert.collection(c) for c in page.collections)
            if not page.next_page_token or page.next_page_token == token:
                return found
            token = page.next_page_token

    async def delete_collection(
        self, name: str, *, timeout: Timeout = DEFAULT
    ) -> t.CollectionDeleted:
        """See `Client.delete_collection`."""
        reply = await self._call(
            lambda: self._stub.DeleteCollection, pb.DeleteCollectionRequest(name=name), timeout
        )
        return t.CollectionDeleted(reply.deleted_documents, reply.deleted_chunks)

    # --- documents ---------------------------------------------------------------

    async def upsert(
        self,
        collection: str,
        documents: Iterable[t.DocumentLike],
        *,
        batch_size: int = UPSERT_BATCH,
        timeout: Timeout = DEFAULT,
    ) -> builtins.list[t.UpsertResult]:
        """See `Client.upsert`."""
        results: builtins.list[t.UpsertResult] = []
        for batch in convert.batches(documents, min(batch_size, 1000), 2**62):
            answered: builtins.list[t.UpsertResult] = []
            if batch.documents:
                request = pb.UpsertDocumentsRequest(
                    collection=collection, documents=batch.documents
                )
                reply = await self._call(lambda: self._stub.UpsertDocuments, request, timeout)
                answered = convert.batch_results(reply.results, None, batch.ids)
            results.extend(batch.in_order(answered))
        return results

    async def ingest(
        self,
        collection: str,
        documents: Iterable[t.DocumentLike] | AsyncIterable[t.DocumentLike],
        *,
        batch_size: int = INGEST_BATCH,
        max_in_flight: int = INGEST_IN_FLIGHT,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        timeout: float | None = None,
    ) -> AsyncIterator[t.UpsertResult]:
        """See `Client.ingest`; `documents` may also be an async iterable
        (an async generator reading files or a queue, say). Use as
        `async for result in client.ingest(...)`."""
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._channel()
        window = asyncio.Semaphore(max_in_flight)
        sent: collections.deque[convert.Batch] = collections.deque()
        leftover: builtins.list[t.UpsertResult] = []
        failed: builtins.list[BaseException] = []

        async def requests() -> AsyncIterator[pb.IngestDocumentsRequest]:
            try:
                async for batch in _abatches(documents, batch_size, max_batch_bytes):
                    if not batch.documents:
                        leftover.extend(batch.in_order([]))
                        continue
                    await window.acquire()
                    sent.append(batch)
                    yield pb.IngestDocumentsRequest(
                        collection=collection, documents=batch.documents
                    )
            except Exception as exc:
                failed.append(exc)  # ends the stream cleanly; raised below

        call = self._stub.IngestDocuments(requests(), timeout=timeout)
        try:
            async for response in call:
                batch = sent.popleft()
                window.release()
                answered = convert.batch_results(response.results, response.status, batch.ids)
                for result in batch.in_order(answered):
                    yield result
                if failed:
                    raise failed[0]
        except grpc.aio.AioRpcError as exc:
            if failed:
                raise failed[0] from None
            raise error_from_rpc(exc) from exc
        finally:
            call.cancel()
        if failed:
            raise failed[0]
        for result in leftover:
            yield result

    async def get(
        self, collection: str, id: str, *, timeout: Timeout = DEFAULT
    ) -> t.StoredDocument:
        """See `Client.get`."""
        request = pb.GetDocumentRequest(collection=collection, id=id, view=pb.DOCUMENT_VIEW_FULL)
        reply = await self._call(lambda: self._stub.GetDocument, request, timeout)
        return convert.stored_document(reply, True)

    def list(
        self,
        collection: str,
        *,
        where: Where | None = None,
        states: Sequence[t.DocumentState | str] = (),
        include_text: bool = False,
        page_size: int = 0,
        timeout: Timeout = DEFAULT,
    ) -> AsyncIterator[t.StoredDocument]:
        """See `Client.list`: `async for document in client.list(...)`."""
        request = _list_request(collection, where, states, include_text, page_size)
        return self._pages(request, include_text, timeout)

    async def _pages(
        self, request: pb.ListDocumentsRequest, include_text: bool, timeout: Timeout
    ) -> AsyncIterator[t.StoredDocument]:
        while True:
            page = await self._call(lambda: self._stub.ListDocuments, request, timeout)
            for document in page.documents:
                yield convert.stored_document(document, include_text)
            if not page.next_page_token or page.next_page_token == request.page_token:
                return
            request.page_token = page.next_page_token

    async def delete(
        self,
        collection: str,
        ids: Sequence[str] | None = None,
        *,
        where: Where | None = None,
        timeout: Timeout = DEFAULT,
    ) -> t.DeleteResult:
        """See `Client.delete`."""
        request = convert.delete_request(collection, ids, compile_where(where))
        reply = await self._call(lambda: self._stub.DeleteDocuments, request, timeout)
        return t.DeleteResult(reply.deleted_count, builtins.list(reply.not_found_ids))

    async def search(
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
        """See `Client.search`."""
        request = _search_request(
            collection,
            query,
            top_k,
            where,
            mode=mode,
            dense_weight=dense_weight,
            keyword_weight=keyword_weight,
        )
        reply = await self._call(lambda: self._stub.Search, request, timeout)
        return convert.search_results(reply)

    async def reconcile(
        self, collection: str, *, dry_run: bool = False, timeout: Timeout = DEFAULT
    ) -> t.ReconcileReport:
        """See `Client.reconcile`."""
        request = pb.ReconcileRequest(collection=collection, dry_run=dry_run)
        return convert.reconcile_report(
            await self._call(lambda: self._stub.Reconcile, request, timeout)
        )

    async def stats(self, collection: str | None = None, *, timeout: Timeout = DEFAULT) -> t.Stats:
        """See `Client.stats`."""
        request = pb.GetStatsRequest(collection=collection or "")
        return convert.stats(await self._call(lambda: self._stub.GetStats, request, timeout))


async def _abatches(
    documents: Iterable[t.DocumentLike] | AsyncIterable[t.DocumentLike],
    batch_size: int,
    max_bytes: int,
) -> AsyncIterator[convert.Batch]:
    batcher = convert.Batcher(batch_size, max_bytes)
    if isinstance(documents, AsyncIterable):
        async for document in documents:
            ready = batcher.add(document)
            if ready is not None:
                yield ready
    else:
        for document in documents:
            ready = batcher.add(document)
            if ready is not None:
                yield ready
    last = batcher.flush()
    if last is not None:
        yield last


class AsyncVectorClient(_AsyncBase):
    """The asyncio twin of `VectorClient`."""

    _vectors: vpb_grpc.VectorServiceStub
    _embeddings: epb_grpc.EmbeddingServiceStub

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

    def _made_stubs(self, channel: grpc.aio.Channel) -> None:
        self._vectors = vpb_grpc.VectorServiceStub(channel)
        self._embeddings = epb_grpc.EmbeddingServiceStub(channel)

    async def embed(
        self, texts: Sequence[str], *, batch_size: int = EMBED_BATCH, timeout: Timeout = DEFAULT
    ) -> builtins.list[builtins.list[float]]:
        """See `VectorClient.embed`."""
        vectors: builtins.list[builtins.list[float]] = []
        for chunk in _chunks(_texts(texts), batch_size):
            reply = await self._call(
                lambda: self._embeddings.Embed, epb.EmbedRequest(texts=chunk), timeout
            )
            vectors.extend(builtins.list(e.values) for e in reply.embeddings)
        return vectors

    async def model_info(self, *, timeout: Timeout = DEFAULT) -> t.ModelInfo:
        """See `VectorClient.model_info`."""
        reply = await self._call(
            lambda: self._embeddings.GetModelInfo, epb.GetModelInfoRequest(), timeout
        )
        return convert.model_info(reply)

    async def ensure_collection(
        self, name: str, *, dimension: int = 0, model: str = "", timeout: Timeout = DEFAULT
    ) -> t.VectorCollectionInfo:
        """See `VectorClient.ensure_collection`."""
        request = vpb.EnsureCollectionRequest(name=name, dimension=dimension, model=model)
        reply = await self._call(lambda: self._vectors.EnsureCollection, request, timeout)
        return t.VectorCollectionInfo(reply.name, reply.dimension, reply.model, reply.created)

    async def drop_collection(self, name: str, *, timeout: Timeout = DEFAULT) -> bool:
        """See `VectorClient.drop_collection`."""
        reply = await self._call(
            lambda: self._vectors.DropCollection, vpb.DropCollectionRequest(name=name), timeout
        )
        return bool(reply.dropped)

    async def upsert(
        self,
        collection: str,
        records: Iterable[t.RecordLike],
        *,
        batch_size: int = RECORD_BATCH,
        timeout: Timeout = DEFAULT,
    ) -> builtins.list[t.RecordResult]:
        """See `VectorClient.upsert`."""
        results: builtins.list[t.RecordResult] = []
        for chunk in _chunks(builtins.list(records), batch_size):
            request = vpb.UpsertRequest(
                collection=collection,
                records=[convert.record_to_proto(r, f"records[{i}]") for i, r in enumerate(chunk)],
            )
            reply = await self._call(lambda: self._vectors.Upsert, request, timeout)
            results.extend(convert.record_result(r) for r in reply.results)
        return results

    async def query(
        self,
        collection: str,
        text: str | None = None,
        *,
        vector: Sequence[float] | None = None,
        top_k: int = 10,
        where: Where | None = None,
        timeout: Timeout = DEFAULT,
    ) -> builtins.list[t.Match]:
        """See `VectorClient.query`."""
        request = _query_request(collection, text, vector, top_k, where)
        reply = await self._call(lambda: self._vectors.Query, request, timeout)
        return [convert.match(m) for m in reply.matches]

    async def get(
        self,
        collection: str,
        ids: Sequence[str],
        *,
        include_vectors: bool = False,
        timeout: Timeout = DEFAULT,
    ) -> builtins.list[t.StoredRecord]:
        """See `VectorClient.get`."""
        request = vpb.GetRequest(
            collection=collection, ids=_ids(ids), include_vectors=include_vectors
        )
        reply = await self._call(lambda: self._vectors.Get, request, timeout)
        return [convert.stored_record(r) for r in reply.records]

    async def delete(
        self,
        collection: str,
        ids: Sequence[str] | None = None,
        *,
        where: Where | None = None,
        timeout: Timeout = DEFAULT,
    ) -> int:
        """See `VectorClient.delete`."""
        request = _vector_delete_request(collection, ids, where)
        reply = await self._call(lambda: self._vectors.Delete, request, timeout)
        return int(reply.deleted_count)

    async def count(self, collection: str, *, timeout: Timeout = DEFAULT) -> int:
        """See `VectorClient.count`."""
        reply = await self._call(
            lambda: self._vectors.Count, vpb.CountRequest(collection=collection), timeout
        )
        return int(reply.count)

    def list_ids(
        self,
        collection: str,
        *,
        where: Where | None = None,
        page_size: int = 0,
        timeout: Timeout = DEFAULT,
    ) -> AsyncIterator[str]:
        """See `VectorClient.list_ids`."""
        request = vpb.ListIdsRequest(collection=collection, page_size=page_size)
        proto = compile_where(where)
        if proto is not None:
            request.filter.CopyFrom(proto)
        return self._id_pages(request, timeout)

    async def _id_pages(self, request: vpb.ListIdsRequest, timeout: Timeout) -> AsyncIterator[str]:
        while True:
            page = await self._call(lambda: self._vectors.ListIds, request, timeout)
            for record_id in page.ids:
                yield record_id
            if not page.next_page_token or page.next_page_token == request.page_token:
                return
            request.page_token = page.next_page_token
