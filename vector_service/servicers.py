"""`askmojo.vector.v1.EmbeddingService` and `VectorService`: each method
converts the request, makes one service-layer call, converts the result.
Errors become statuses in `errors.py`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeAlias

import grpc

from askmojo.common.rpc import OK_STATUS
from askmojo.common.streams import in_order
from askmojo.vector.v1 import embedding_service_pb2 as epb
from askmojo.vector.v1 import embedding_service_pb2_grpc as epb_grpc
from askmojo.vector.v1 import vector_service_pb2 as vpb
from askmojo.vector.v1 import vector_service_pb2_grpc as vpb_grpc
from vector_service import convert
from vector_service.config import VectorSettings
from vector_service.errors import check_deadline, grpc_method, to_rpc_status
from vector_service.operations import Embedder, Index, TextsOutcome

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

# Batches of one EmbedStream in flight at once: enough to keep the batcher
# fed, and with texts to choose from for batches of similar lengths (4 x 64
# texts left it 8 batches of 32 to choose from, while some are embedding);
# few enough that a slow reader stalls the stream (flow control).
_STREAM_PIPELINE = 8


class EmbeddingServicer(epb_grpc.EmbeddingServiceServicer):
    def __init__(self, embedder: Embedder, settings: VectorSettings) -> None:
        self._embedder = embedder
        self._settings = settings

    @grpc_method
    async def Embed(self, request: epb.EmbedRequest, context: Context) -> epb.EmbedResponse:
        check_deadline(context)
        result = await self._embedder.embed(list(request.texts), wait=False)
        return convert.to_proto_embed_response(result, self._embedder.model)

    @grpc_method
    async def EmbedStream(
        self, request_iterator: AsyncIterator[epb.EmbedStreamRequest], context: Context
    ) -> AsyncIterator[epb.EmbedStreamResponse]:
        # Up to _STREAM_PIPELINE batches are embedded at once, so the batcher
        # always has the next one; responses go out in request order. Each
        # text gets its own status (a bad one fails alone); a batch refused
        # as a whole gets an error status; either way the stream goes on.
        model = self._embedder.model

        def embed(request: epb.EmbedStreamRequest) -> Awaitable[TextsOutcome]:
            return self._embedder.embed_each(list(request.texts), wait=True)

        async for request, result in in_order(request_iterator, embed, _STREAM_PIPELINE):
            if isinstance(result, Exception):
                yield epb.EmbedStreamResponse(
                    batch_id=request.batch_id, status=to_rpc_status(result)
                )
                continue
            yield epb.EmbedStreamResponse(
                embeddings=convert.to_proto_text_embeddings(result, to_rpc_status),
                batch_id=request.batch_id,
                status=OK_STATUS,
                model=model.name,
                dimension=model.dimension,
            )

    @grpc_method
    async def GetModelInfo(
        self, request: epb.GetModelInfoRequest, context: Context
    ) -> epb.GetModelInfoResponse:
        return convert.to_proto_model_info(self._embedder.model, self._settings)


class VectorServicer(vpb_grpc.VectorServiceServicer):
    def __init__(self, index: Index) -> None:
        self._index = index

    @grpc_method
    async def EnsureCollection(
        self, request: vpb.EnsureCollectionRequest, context: Context
    ) -> vpb.EnsureCollectionResponse:
        info = await self._index.ensure_collection(request.name, request.dimension, request.model)
        return convert.to_proto_collection(info)

    @grpc_method
    async def DropCollection(
        self, request: vpb.DropCollectionRequest, context: Context
    ) -> vpb.DropCollectionResponse:
        return vpb.DropCollectionResponse(dropped=await self._index.drop_collection(request.name))

    @grpc_method
    async def Upsert(self, request: vpb.UpsertRequest, context: Context) -> vpb.UpsertResponse:
        check_deadline(context)
        records = convert.from_proto_records(request.records)
        outcomes = await self._index.upsert(request.collection, records, wait=False)
        return vpb.UpsertResponse(results=convert.to_proto_record_results(outcomes, to_rpc_status))

    @grpc_method
    async def UpsertStream(
        self, request_iterator: AsyncIterator[vpb.UpsertStreamRequest], context: Context
    ) -> AsyncIterator[vpb.UpsertStreamResponse]:
        # One batch at a time: the next request is read after this one is
        # stored, so a fast producer is slowed by flow control.
        async for request in request_iterator:
            records = convert.from_proto_records(request.records)
            try:
                outcomes = await self._index.upsert(request.collection, records, wait=True)
            except Exception as exc:  # a refused batch is reported in-band; the stream goes on
                status = to_rpc_status(exc)
                yield vpb.UpsertStreamResponse(
                    results=[vpb.RecordResult(id=r.id, status=status) for r in records],
                    status=status,
                )
                continue
            yield vpb.UpsertStreamResponse(
                results=convert.to_proto_record_results(outcomes, to_rpc_status),
                status=OK_STATUS,
            )

    @grpc_method
    async def Query(self, request: vpb.QueryRequest, context: Context) -> vpb.QueryResponse:
        check_deadline(context)
        kind = request.WhichOneof("query")
        matches = await self._index.query(
            request.collection,
            request.query_text if kind == "query_text" else None,
            list(request.query_vector.values) if kind == "query_vector" else None,
            request.top_k,
            convert.from_proto_filter(request.filter, request.HasField("filter")),
        )
        return vpb.QueryResponse(matches=convert.to_proto_matches(matches))

    @grpc_method
    async def Get(self, request: vpb.GetRequest, context: Context) -> vpb.GetResponse:
        records = await self._index.get(
            request.collection, list(request.ids), request.include_vectors
        )
        return vpb.GetResponse(records=convert.to_proto_stored(records))

    @grpc_method
    async def Delete(self, request: vpb.DeleteRequest, context: Context) -> vpb.DeleteResponse:
        deleted = await self._index.delete(
            request.collection,
            list(request.ids),
            convert.from_proto_filter(request.filter, request.HasField("filter")),
        )
        return vpb.DeleteResponse(deleted_count=deleted)

    @grpc_method
    async def Count(self, request: vpb.CountRequest, context: Context) -> vpb.CountResponse:
        return vpb.CountResponse(count=await self._index.count(request.collection))

    @grpc_method
    async def ListIds(self, request: vpb.ListIdsRequest, context: Context) -> vpb.ListIdsResponse:
        ids, token = await self._index.list_ids(
            request.collection,
            request.page_size,
            request.page_token,
            convert.from_proto_filter(request.filter, request.HasField("filter")),
        )
        return vpb.ListIdsResponse(ids=ids, next_page_token=token)
