"""`askmojo.metadata.v1.MetadataService`: one method per RPC, each the same
three steps — convert the request, run one catalog call on the database
thread pool, convert the result. Errors become statuses in `errors.py`."""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeAlias, TypeVar

import grpc

from askmojo.common.rpc import call_deadline, status_of
from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from metadata_service import convert
from metadata_service.catalog import Catalog
from metadata_service.config import MetadataSettings
from metadata_service.errors import check_deadline, grpc_method, to_rpc_status
from metadata_service.pipeline import IngestBatch, Pipeline

T = TypeVar("T")
Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class MetadataServicer(pb_grpc.MetadataServiceServicer):
    """Calls that touch only the database go to the catalog (on the thread
    pool); calls that span both stores go to the pipeline."""

    def __init__(
        self,
        catalog: Catalog,
        pipeline: Pipeline,
        executor: ThreadPoolExecutor,
        settings: MetadataSettings,
    ) -> None:
        self._catalog = catalog
        self._pipeline = pipeline
        self._executor = executor
        self._settings = settings

    def _deadline(self, context: Context) -> float:
        """The call's own deadline, passed down to the vector service."""
        check_deadline(context)
        return call_deadline(context, self._settings.index_on_write_timeout)

    def _stream_deadline(self, context: Context) -> float:
        """An ingest stream's own deadline, or none (math.inf): it runs as
        long as the client sends, each batch indexed within its own budget."""
        check_deadline(context)
        return call_deadline(context, math.inf)

    async def _run(self, context: Context, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Runs blocking catalog work off the event loop, on the bounded pool."""
        check_deadline(context)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    @grpc_method
    async def CreateCollection(
        self, request: pb.CreateCollectionRequest, context: Context
    ) -> pb.Collection:
        spec = convert.from_proto_create_collection(request)
        info = await self._run(context, self._catalog.create_collection, spec)
        return convert.to_proto_collection(info)

    @grpc_method
    async def GetCollection(
        self, request: pb.GetCollectionRequest, context: Context
    ) -> pb.Collection:
        info = await self._run(context, self._catalog.get_collection, request.name)
        return convert.to_proto_collection(info)

    @grpc_method
    async def ListCollections(
        self, request: pb.ListCollectionsRequest, context: Context
    ) -> pb.ListCollectionsResponse:
        page = await self._run(
            context, self._catalog.list_collections, request.page_size, request.page_token
        )
        return convert.to_proto_list_collections(page)

    @grpc_method
    async def DeleteCollection(
        self, request: pb.DeleteCollectionRequest, context: Context
    ) -> pb.DeleteCollectionResponse:
        outcome = await self._pipeline.delete_collection(request.name, self._deadline(context))
        return convert.to_proto_delete_collection(outcome)

    @grpc_method
    async def UpsertDocuments(
        self, request: pb.UpsertDocumentsRequest, context: Context
    ) -> pb.UpsertDocumentsResponse:
        documents = convert.from_proto_documents(list(request.documents))
        outcomes = await self._pipeline.upsert_documents(
            request.collection, documents, self._deadline(context)
        )
        return pb.UpsertDocumentsResponse(
            results=convert.to_proto_upsert_results(outcomes, to_rpc_status)
        )

    @grpc_method
    async def IngestDocuments(
        self, request_iterator: AsyncIterator[pb.IngestDocumentsRequest], context: Context
    ) -> AsyncIterator[pb.IngestDocumentsResponse]:
        # A few batches in flight at most (INGEST_BATCHES_IN_FLIGHT): the next
        # request is read only when one of them is answered, so gRPC flow
        # control slows a fast producer down end to end.
        batches = (
            IngestBatch(request.collection, convert.from_proto_documents(list(request.documents)))
            async for request in request_iterator
        )
        async for outcomes, refused in self._pipeline.ingest_stream(
            batches, self._stream_deadline(context)
        ):
            yield pb.IngestDocumentsResponse(
                results=convert.to_proto_upsert_results(outcomes, to_rpc_status),
                status=status_of(refused, to_rpc_status),
            )

    @grpc_method
    async def GetDocument(self, request: pb.GetDocumentRequest, context: Context) -> pb.Document:
        info = await self._run(
            context,
            self._catalog.get_document,
            request.collection,
            request.id,
            include_text=convert.include_text(request.view, default_full=True),
        )
        return convert.to_proto_document(info)

    @grpc_method
    async def ListDocuments(
        self, request: pb.ListDocumentsRequest, context: Context
    ) -> pb.ListDocumentsResponse:
        query = convert.from_proto_list_documents(request)
        page = await self._run(context, self._catalog.list_documents, query)
        return convert.to_proto_list_documents(page)

    @grpc_method
    async def DeleteDocuments(
        self, request: pb.DeleteDocumentsRequest, context: Context
    ) -> pb.DeleteDocumentsResponse:
        where = convert.from_proto_filter(request.filter, request.HasField("filter"))
        outcome = await self._pipeline.delete_documents(
            request.collection, list(request.ids), where, self._deadline(context)
        )
        return convert.to_proto_delete_documents(outcome)

    @grpc_method
    async def Search(self, request: pb.SearchRequest, context: Context) -> pb.SearchResponse:
        where = convert.from_proto_filter(request.filter, request.HasField("filter"))
        options = convert.from_proto_search_options(request)
        result = await self._pipeline.search(
            request.collection,
            request.query,
            request.top_k,
            where,
            self._deadline(context),
            options=options,
        )
        return convert.to_proto_search(result)

    @grpc_method
    async def Reconcile(
        self, request: pb.ReconcileRequest, context: Context
    ) -> pb.ReconcileResponse:
        outcome = await self._pipeline.reconcile(
            request.collection, request.dry_run, self._deadline(context)
        )
        return convert.to_proto_reconcile(outcome)

    @grpc_method
    async def GetStats(self, request: pb.GetStatsRequest, context: Context) -> pb.GetStatsResponse:
        stats = await self._run(context, self._catalog.stats, request.collection)
        return convert.to_proto_stats(stats)
