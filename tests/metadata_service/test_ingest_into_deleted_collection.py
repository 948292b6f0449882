"""An ingest batch written just before its collection was deleted is
answered per document; the stream goes on (572f188, found by
tests/pipeline/test_pg_replicas.py, where one replica deletes a collection
another still ingests into).

After indexing a written batch, the pipeline looks up its documents' states
by collection name. When the collection had been deleted meanwhile (by
another call, worker or replica), that look-up raised NotFound, which ended
the whole IngestDocuments stream NOT_FOUND, although a batch-level problem
is reported in the batch's own response and the stream goes on. Now the
batch is answered as it was written.

Real gRPC (an in-process server with the real servicer and pipeline), real
SQLite file, the session's vector service. The moment is made, not hoped
for: the batch's vector upload is held until DeleteCollection has returned.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import grpc
from google.rpc import code_pb2

from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from metadata_service.catalog import Catalog
from metadata_service.config import MetadataSettings
from metadata_service.db.engine import Database
from metadata_service.indexing import Indexer
from metadata_service.outbox import Outbox
from metadata_service.pipeline import Pipeline
from metadata_service.servicer import MetadataServicer
from tests.conftest import RunningServer
from tests.metadata_service.held_client import HeldVectorClient

TIMEOUT = 30


def _batch(*ids: str) -> pb.IngestDocumentsRequest:
    documents = [pb.Document(id=i, text=f"Document {i} about lighthouses.") for i in ids]
    return pb.IngestDocumentsRequest(collection="docs", documents=documents)


def test_a_batch_written_before_its_collection_was_deleted_is_answered(
    stored: tuple[Database, Catalog, MetadataSettings], vector_server: RunningServer
) -> None:
    db, catalog, settings = stored

    async def scenario() -> list[pb.IngestDocumentsResponse]:
        held = HeldVectorClient(vector_server.address)
        server = grpc.aio.server()
        try:
            with ThreadPoolExecutor(4) as executor:
                indexer = Indexer(db, held, executor, settings)
                pipeline = Pipeline(
                    catalog, Outbox(db), executor, settings, indexer=indexer, client=held
                )
                pb_grpc.add_MetadataServiceServicer_to_server(
                    MetadataServicer(catalog, pipeline, executor, settings), server
                )
                port = server.add_insecure_port("127.0.0.1:0")
                await server.start()
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                    stub = pb_grpc.MetadataServiceStub(channel)
                    requests: asyncio.Queue[pb.IngestDocumentsRequest | None] = asyncio.Queue()

                    async def sent() -> AsyncIterator[pb.IngestDocumentsRequest]:
                        while (request := await requests.get()) is not None:
                            yield request

                    call = stub.IngestDocuments(sent(), timeout=TIMEOUT)
                    answers = []
                    # The first batch is written; its indexing waits on the upload.
                    await requests.put(_batch("a", "b"))
                    await asyncio.wait_for(held.sending.wait(), TIMEOUT)
                    # Meanwhile another call deletes the collection.
                    await stub.DeleteCollection(pb.DeleteCollectionRequest(name="docs"))
                    held.go.set()
                    answers.append(await call.read())
                    # The stream goes on: the next batch is refused in its answer.
                    await requests.put(_batch("c"))
                    answers.append(await call.read())
                    await requests.put(None)
                    assert await call.read() is grpc.aio.EOF
                    assert await call.code() is grpc.StatusCode.OK
                    return answers
        finally:
            await server.stop(None)
            await held.close()

    first, second = asyncio.run(scenario())
    assert first.status.code == code_pb2.OK
    assert [(r.id, r.state, r.status.code) for r in first.results] == [
        ("a", pb.UPSERT_STATE_PENDING, code_pb2.OK),
        ("b", pb.UPSERT_STATE_PENDING, code_pb2.OK),
    ]
    assert second.status.code == code_pb2.NOT_FOUND
    assert "docs" in second.status.message
    assert [(r.id, r.state, r.status.code) for r in second.results] == [
        ("c", pb.UPSERT_STATE_FAILED, code_pb2.NOT_FOUND)
    ]
