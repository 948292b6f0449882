"""A long IngestDocuments stream indexes as it goes: each batch has its own
indexing budget (INDEX_ON_WRITE_TIMEOUT from when it was written), so a batch
sent after the first one's budget ran out is still indexed, not left PENDING."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from metadata_service.config import MetadataSettings
from tests.conftest import RunningServer
from tests.pipeline.conftest import metadata_stub
from tests.pipeline.test_pipeline import TEXTS, doc

BUDGET = 3.0  # INDEX_ON_WRITE_TIMEOUT of the service under test, seconds
TIMEOUT = 8.0  # a client deadline shorter than a 400-document (~2,800-chunk) batch takes to index


@pytest.fixture
def short_budget(paired_settings: MetadataSettings) -> Iterator[pb_grpc.MetadataServiceStub]:
    with metadata_stub(
        paired_settings.model_copy(update={"index_on_write_timeout": BUDGET})
    ) as stub:
        yield stub


def _wait_until(instant: float) -> None:
    """Lets the clock pass `instant` (the point of the test is time passing;
    nothing else is ordered by it)."""
    pause = threading.Event()
    while time.monotonic() <= instant:
        pause.wait(max(0.01, instant - time.monotonic()))


@pytest.mark.parametrize("stream_timeout", [None, 600.0])
def test_batches_of_a_stream_older_than_the_budget_are_indexed(
    short_budget: pb_grpc.MetadataServiceStub, stream_timeout: float | None
) -> None:
    stub = short_budget
    collection = f"long-{uuid.uuid4().hex[:8]}"
    stub.CreateCollection(pb.CreateCollectionRequest(name=collection))
    send_second = threading.Event()

    def requests() -> Iterator[pb.IngestDocumentsRequest]:
        yield pb.IngestDocumentsRequest(collection=collection, documents=[doc("a", TEXTS["cats"])])
        assert send_second.wait(120), "the test never released the second batch"
        yield pb.IngestDocumentsRequest(collection=collection, documents=[doc("b", TEXTS["grpc"])])

    started = time.monotonic()
    responses = stub.IngestDocuments(requests(), timeout=stream_timeout)
    first = next(responses)
    assert [(r.id, r.state) for r in first.results] == [("a", pb.UPSERT_STATE_INDEXED)]
    # The stream is now older than one batch's budget: a budget counted from
    # the start of the stream would have nothing left for the second batch.
    _wait_until(started + BUDGET + 0.5)
    send_second.set()
    second = next(responses)
    assert [(r.id, r.state) for r in second.results] == [("b", pb.UPSERT_STATE_INDEXED)]
    assert list(responses) == []


def _big_batch(count: int) -> list[pb.Document]:
    """`count` documents of ~2,200 distinct characters: ~7 chunks each, so
    7,000 chunks for 1,000 documents, far more than the model embeds within
    TIMEOUT (the vector service embeds one stream batch at a time, so
    nothing of it is left queued once the call gives up)."""
    return [
        doc(
            f"d{i:04d}",
            " ".join(f"document {i} sentence {j} about topic {i % 17}." for j in range(50)),
        )
        for i in range(count)
    ]


@pytest.fixture
def sqlite_stub(
    settings: MetadataSettings, vector_server: RunningServer
) -> Iterator[pb_grpc.MetadataServiceStub]:
    """The deadline margin is the pipeline's, not the database's: SQLite only."""
    with metadata_stub(
        settings.model_copy(update={"vector_service_address": vector_server.address})
    ) as stub:
        yield stub


@pytest.mark.parametrize("method", ["UpsertDocuments", "IngestDocuments"])
def test_a_batch_slower_than_the_deadline_is_answered_in_time(
    sqlite_stub: pb_grpc.MetadataServiceStub, method: str
) -> None:
    """A batch whose indexing needs longer than the client's deadline (and
    INDEX_ON_WRITE_TIMEOUT, 120 s, longer still): indexing stops short of
    the deadline, so the caller gets its per-document answers, INDEXED or
    PENDING, not DEADLINE_EXCEEDED (the server used to index up to the very
    deadline, and its answer arrived after it)."""
    stub = sqlite_stub
    collection = f"slow-{uuid.uuid4().hex[:8]}"
    stub.CreateCollection(pb.CreateCollectionRequest(name=collection))
    documents = _big_batch(400)
    if method == "UpsertDocuments":
        request = pb.UpsertDocumentsRequest(collection=collection, documents=documents)
        results = stub.UpsertDocuments(request, timeout=TIMEOUT).results
    else:
        batch = pb.IngestDocumentsRequest(collection=collection, documents=documents)
        (response,) = stub.IngestDocuments(iter([batch]), timeout=TIMEOUT)
        results = response.results
    assert [r.id for r in results] == [d.id for d in documents]
    states = {r.state for r in results}
    assert states <= {pb.UPSERT_STATE_INDEXED, pb.UPSERT_STATE_PENDING}
    assert pb.UPSERT_STATE_PENDING in states, "indexed within TIMEOUT: make the batch slower"
