"""The SDK against the real pair: a metadata service (real SQLite file) wired
to the session's vector service (real model, embedded Chroma), over real
sockets on port 0."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from askmojo.client import Client, VectorClient
from metadata_service.config import MetadataSettings
from metadata_service.server import prepare_database
from tests.conftest import RunningServer


@pytest.fixture
def paired(settings: MetadataSettings, vector_server: RunningServer) -> Iterator[RunningServer]:
    paired_settings = settings.model_copy(
        update={
            "vector_service_address": vector_server.address,
            "index_poll_seconds": 0.2,
            "index_max_backoff": 0.5,
        }
    )
    prepare_database(paired_settings)
    with RunningServer.metadata(paired_settings) as running:
        yield running


@pytest.fixture
def client(paired: RunningServer) -> Iterator[Client]:
    with Client(paired.address) as opened:
        yield opened


@pytest.fixture
def vector_client(vector_server: RunningServer) -> Iterator[VectorClient]:
    with VectorClient(vector_server.address) as opened:
        yield opened


@pytest.fixture
def name() -> str:
    """A fresh collection name."""
    return f"docs-{uuid.uuid4().hex[:8]}"


DOCS = [
    {
        "id": "wal",
        "text": "SQLite in WAL mode lets readers and one writer work at the same time.",
        "metadata": {"year": 2024, "lang": "en", "draft": False, "score": 0.9},
    },
    {
        "id": "cats",
        "text": "Cats purr when they are content and relaxed.",
        "metadata": {"year": 2019, "lang": "en", "draft": True, "score": 0.2},
    },
    {
        "id": "grpc",
        "text": "gRPC streams carry batches of messages in both directions.",
        "metadata": {"year": 2022, "lang": "fr", "draft": False, "score": 0.5},
    },
]
