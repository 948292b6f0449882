"""Settings that must agree across the pair are checked when the metadata
service first reaches the vector service (issue 11: a metadata limit above
the vector service's made every chunk FAILED there). A mismatch keeps the
work PENDING and the log names the setting to change."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc
import pytest

from askmojo.common.text_hash import SERVICE_SET_KEYS
from askmojo.common.v1 import common_pb2 as c
from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from metadata_service.config import RESERVED_VECTOR_KEYS, MetadataSettings
from metadata_service.server import prepare_database
from tests.conftest import RunningServer
from tests.pipeline.conftest import eventually


@pytest.fixture
def mismatched(
    paired_settings: MetadataSettings, vector_server: RunningServer
) -> Iterator[pb_grpc.MetadataServiceStub]:
    # The vector service takes one key fewer than its setting from a caller
    # (it sets one itself): the setting's worth of document keys is too many.
    vector_keys = vector_server.settings.max_metadata_keys
    settings = paired_settings.model_copy(update={"max_metadata_keys": vector_keys})
    prepare_database(settings)
    with (
        RunningServer.metadata(settings) as running,
        grpc.insecure_channel(running.address) as channel,
    ):
        yield pb_grpc.MetadataServiceStub(channel)


def test_a_limit_above_the_vector_services_is_reported_and_nothing_fails(
    mismatched: pb_grpc.MetadataServiceStub,
    vector_server: RunningServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    stub = mismatched
    stub.CreateCollection(pb.CreateCollectionRequest(name="mismatch"), timeout=30)
    # As many keys as the metadata service allows: with its own, more than the
    # vector service takes, so indexing would fail (it did, every chunk).
    allowed = vector_server.settings.max_metadata_keys
    keys = {f"k{i}": c.MetadataValue(int_value=i) for i in range(allowed)}
    reply = stub.UpsertDocuments(
        pb.UpsertDocumentsRequest(
            collection="mismatch", documents=[pb.Document(id="d1", text="hello", metadata=keys)]
        ),
        timeout=60,
    )
    assert reply.results[0].state == pb.DOCUMENT_STATE_PENDING, reply
    needed = vector_server.settings.max_metadata_keys + RESERVED_VECTOR_KEYS + SERVICE_SET_KEYS
    expected = (
        f"raise VECTOR_MAX_METADATA_KEYS to at least {needed} or lower METADATA_MAX_METADATA_KEYS"
    )
    eventually(lambda: expected in caplog.text, timeout=30, what="the mismatch in the log")
    document = stub.GetDocument(pb.GetDocumentRequest(collection="mismatch", id="d1"), timeout=30)
    assert document.state == pb.DOCUMENT_STATE_PENDING  # never FAILED for a setting
