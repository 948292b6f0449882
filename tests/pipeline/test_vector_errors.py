"""What a caller reads when the vector service is away or refuses a Search:
something it can act on, in its own field names; the vector service's
address and error go to the server's log."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc
import pytest

from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from metadata_service.config import MetadataSettings
from metadata_service.server import prepare_database
from tests.conftest import RunningServer
from tests.metadata_service.test_grpc_api import rpc_error
from tests.pipeline.test_pipeline import TEXTS, doc, upsert

Stub = pb_grpc.MetadataServiceStub
AWAY = "127.0.0.1:1"  # nothing listens there


@pytest.fixture
def away_stub(settings: MetadataSettings) -> Iterator[Stub]:
    away = settings.model_copy(
        update={"vector_service_address": AWAY, "index_poll_seconds": 0.2, "index_max_backoff": 0.5}
    )
    prepare_database(away)
    with RunningServer.metadata(away) as running, grpc.insecure_channel(running.address) as ch:
        stub = Stub(ch)
        stub.CreateCollection(pb.CreateCollectionRequest(name="docs"))
        yield stub


def test_unavailable_says_what_to_do_and_logs_the_detail(
    away_stub: Stub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="metadata_service")
    assert upsert(away_stub, "docs", doc("a", TEXTS["cats"])) == [("a", pb.UPSERT_STATE_PENDING)]
    code, message, _ = rpc_error(
        lambda: away_stub.Search(
            pb.SearchRequest(collection="docs", query="cats", mode=pb.SEARCH_MODE_DENSE),
            timeout=60,
        )
    )
    assert code == grpc.StatusCode.UNAVAILABLE
    assert message == "search needs the vector service, which is unavailable; try again"
    # HYBRID (the default) answers from the keyword index instead, and says so.
    answer = away_stub.Search(pb.SearchRequest(collection="docs", query="cats"), timeout=60)
    assert [h.document_id for h in answer.hits] == ["a"]
    assert answer.degraded and "unavailable" in answer.degraded_reason
    code, message, _ = rpc_error(
        lambda: away_stub.Reconcile(pb.ReconcileRequest(collection="docs"), timeout=60)
    )
    assert code == grpc.StatusCode.UNAVAILABLE
    assert message == "reconcile needs the vector service, which is unavailable; try again"
    # The operator still learns where and why.
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(AWAY in line for line in logged), logged


def test_a_huge_query_is_refused_in_the_callers_terms(stub: Stub, collection: str) -> None:
    upsert(stub, collection, doc("a", TEXTS["cats"]))
    code, message, fields = rpc_error(
        lambda: stub.Search(
            pb.SearchRequest(collection=collection, query="cat " * 2_500_000), timeout=60
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields == ["query"]
    assert "MAX_QUERY_BYTES" in message
    assert "texts[0]" not in message and "MAX_TEXT_LENGTH" not in message


@pytest.fixture
def unchecked_stub(paired_settings: MetadataSettings) -> Iterator[Stub]:
    """A metadata service that lets any query through to the vector service."""
    settings = paired_settings.model_copy(update={"max_query_bytes": 1 << 30})
    prepare_database(settings)
    with RunningServer.metadata(settings) as running, grpc.insecure_channel(running.address) as ch:
        stub = Stub(ch)
        stub.CreateCollection(pb.CreateCollectionRequest(name="docs"))
        yield stub


def test_a_refusal_of_the_vector_service_names_the_search_fields(unchecked_stub: Stub) -> None:
    upsert(unchecked_stub, "docs", doc("a", TEXTS["cats"]))
    # Over the vector service's MAX_TEXT_LENGTH (32,768 characters).
    code, message, fields = rpc_error(
        lambda: unchecked_stub.Search(
            pb.SearchRequest(collection="docs", query="cat " * 10_000), timeout=60
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields == ["query"]
    assert message.startswith("query: ")
    assert "texts[0]" not in message
