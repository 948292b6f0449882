"""Crash tests (issue #4): SIGKILL either service in the middle of a large
IngestDocuments stream; after restarts, with no manual step, every document
ends INDEXED and Chroma holds exactly one vector per live chunk."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from askmojo.vector.v1 import vector_service_pb2 as vpb
from askmojo.vector.v1 import vector_service_pb2_grpc as vpb_grpc
from bench.services import ServiceProcess, free_port
from metadata_service.config import MetadataSettings
from metadata_service.server import prepare_database
from tests.conftest import RunningServer
from tests.pipeline.conftest import eventually

pytestmark = pytest.mark.slow

# Twenty batches: kills land after a quarter or a third of them, with more
# still to come (and more than the IN_FLIGHT batches a crash may cost).
DOCUMENTS = 1000
BATCH = 50
IN_FLIGHT = 4  # INGEST_BATCHES_IN_FLIGHT of the metadata service under test
_WORDS = [
    "river",
    "mountain",
    "engine",
    "protocol",
    "garden",
    "theorem",
    "violin",
    "harbor",
    "glacier",
    "compiler",
    "lantern",
    "orchard",
    "circuit",
    "meadow",
    "galaxy",
    "ledger",
    "canyon",
    "falcon",
    "prism",
    "quarry",
]


def corpus() -> list[pb.Document]:
    rng = random.Random(4)
    return [
        pb.Document(
            id=f"doc-{i:05d}",
            text=f"Record {i}. " + " ".join(rng.choice(_WORDS) for _ in range(24)) + ".",
        )
        for i in range(DOCUMENTS)
    ]


def requests(collection: str, docs: list[pb.Document]) -> Iterator[pb.IngestDocumentsRequest]:
    for start in range(0, len(docs), BATCH):
        yield pb.IngestDocumentsRequest(
            collection=collection, documents=docs[start : start + BATCH]
        )


def documents_by_state(stub: pb_grpc.MetadataServiceStub, collection: str) -> dict[int, int]:
    stats = stub.GetStats(pb.GetStatsRequest(collection=collection))
    return {s.state: s.count for s in stats.documents_by_state if s.count}


def assert_consistent(
    stub: pb_grpc.MetadataServiceStub, vectors: vpb_grpc.VectorServiceStub, collection: str
) -> None:
    """Every document INDEXED, one vector per live chunk, and reconcile
    finds nothing to repair."""
    chunks = stub.GetStats(pb.GetStatsRequest(collection=collection)).chunk_count
    name = stub.GetCollection(pb.GetCollectionRequest(name=collection)).vector_collection
    assert vectors.Count(vpb.CountRequest(collection=name)).count == chunks
    check = stub.Reconcile(pb.ReconcileRequest(collection=collection, dry_run=True), timeout=300)
    assert (check.missing_vectors, check.orphan_vectors, check.stale_vectors) == (0, 0, 0)
    assert check.pending_resumed == 0


@pytest.fixture
def vector_process(tmp_path: Path) -> Iterator[ServiceProcess]:
    port = free_port()
    process = ServiceProcess(
        "vector_service",
        port,
        {
            "CHROMADB_PERSIST_DIRECTORY": str(tmp_path / "chroma"),
            "VECTOR_HOST": "127.0.0.1",
            "VECTOR_PORT": str(port),
            "MAX_WORKERS": "1",
            # Started three times: one worker process to load the model
            # into, not two (the express lane is not what is tested here).
            "EXPRESS_WORKERS": "0",
        },
        tmp_path / "vector.log",
    )
    try:
        # Inside: a start that times out must not leave the process behind.
        process.start()
        yield process
    finally:
        process.stop()


def test_vector_service_killed_mid_stream_and_while_deleting(
    settings: MetadataSettings, vector_process: ServiceProcess
) -> None:
    paired = settings.model_copy(
        update={
            "vector_service_address": vector_process.address,
            "index_poll_seconds": 0.2,
            "index_max_backoff": 0.5,
        }
    )
    prepare_database(paired)
    docs = corpus()
    with (
        RunningServer.metadata(paired) as metadata,
        grpc.insecure_channel(metadata.address) as channel,
        grpc.insecure_channel(vector_process.address) as vector_channel,
    ):
        stub = pb_grpc.MetadataServiceStub(channel)
        vectors = vpb_grpc.VectorServiceStub(vector_channel)
        stub.CreateCollection(pb.CreateCollectionRequest(name="crash"))
        states: list[int] = []
        killed = False
        for response in stub.IngestDocuments(requests("crash", docs), timeout=600):
            states.extend(r.state for r in response.results)
            if len(states) >= DOCUMENTS // 4 and not killed:
                vector_process.kill()  # mid-stream: later batches cannot be indexed now
                killed = True
        # The stream went on: every document stored, none refused.
        assert len(states) == DOCUMENTS
        assert set(states) <= {pb.UPSERT_STATE_INDEXED, pb.UPSERT_STATE_PENDING}
        assert pb.UPSERT_STATE_PENDING in states
        vector_process.start()  # same port, same directory
        eventually(
            lambda: documents_by_state(stub, "crash") == {pb.DOCUMENT_STATE_INDEXED: DOCUMENTS},
            timeout=180,
            what="every document INDEXED after the vector service came back",
            describe=lambda: documents_by_state(stub, "crash"),
        )
        assert_consistent(stub, vectors, "crash")

        # Delete half while the vector service is down, then bring it back.
        vector_process.kill()
        gone = [d.id for d in docs[::2]]
        for start in range(0, len(gone), 500):
            stub.DeleteDocuments(
                pb.DeleteDocumentsRequest(collection="crash", ids=gone[start : start + 500])
            )
        vector_process.start()
        name = stub.GetCollection(pb.GetCollectionRequest(name="crash")).vector_collection
        eventually(
            lambda: vectors.Count(vpb.CountRequest(collection=name)).count == DOCUMENTS // 2,
            timeout=120,
            what="the deleted documents' vectors removed",
        )
        left = vectors.Get(vpb.GetRequest(collection=name, ids=[f"{i}#0" for i in gone]))
        assert len(left.records) == 0
        assert_consistent(stub, vectors, "crash")


def test_metadata_service_killed_mid_stream_and_the_client_resends(
    tmp_path: Path, vector_server: RunningServer
) -> None:
    port = free_port()
    metadata = ServiceProcess(
        "metadata_service",
        port,
        {
            "DATABASE_URL": f"sqlite:///{tmp_path / 'metadata.db'}",
            "METADATA_HOST": "127.0.0.1",
            "METADATA_PORT": str(port),
            "VECTOR_SERVICE_ADDRESS": vector_server.address,
            "INDEX_LEASE_SECONDS": "3",
            "INDEX_POLL_SECONDS": "0.2",
            "INGEST_BATCHES_IN_FLIGHT": str(IN_FLIGHT),
        },
        tmp_path / "metadata.log",
    )
    docs = corpus()
    metadata.start()
    try:
        with grpc.insecure_channel(metadata.address) as channel:
            stub = pb_grpc.MetadataServiceStub(channel)
            stub.CreateCollection(pb.CreateCollectionRequest(name="crash"))
            first: dict[str, int] = {}
            with pytest.raises(grpc.RpcError):
                for response in stub.IngestDocuments(requests("crash", docs), timeout=600):
                    first.update((r.id, r.state) for r in response.results)
                    if len(first) >= DOCUMENTS // 3:
                        metadata.kill()
        assert 0 < len(first) < DOCUMENTS
        metadata.start()
        with (
            grpc.insecure_channel(metadata.address) as channel,
            grpc.insecure_channel(vector_server.address) as vector_channel,
        ):
            stub = pb_grpc.MetadataServiceStub(channel)
            vectors = vpb_grpc.VectorServiceStub(vector_channel)
            second: dict[str, int] = {}
            for response in stub.IngestDocuments(requests("crash", docs), timeout=600):
                second.update((r.id, r.state) for r in response.results)
            # Nothing acknowledged before the crash is embedded again.
            assert all(second[i] == pb.UPSERT_STATE_UNCHANGED for i in first)
            resent = [i for i in second if i not in first]
            reembedded = [i for i in resent if second[i] != pb.UPSERT_STATE_INDEXED]
            # At most the batches in flight at the crash (stored, maybe sent to
            # the vector service, not yet answered).
            assert len(reembedded) <= BATCH * IN_FLIGHT
            eventually(
                lambda: documents_by_state(stub, "crash") == {pb.DOCUMENT_STATE_INDEXED: DOCUMENTS},
                timeout=180,
                what="every document INDEXED",
            )
            assert_consistent(stub, vectors, "crash")
    finally:
        metadata.stop()
