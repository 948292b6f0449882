"""Keyed servers for the API key tests: a vector service with keys of its
own (real model, embedded Chroma) shared by the package, and metadata
services with other keys, on port 0 over real sockets."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from metadata_service.config import MetadataSettings
from metadata_service.server import prepare_database
from tests.conftest import RunningServer, metadata_settings, vector_server_on_pool

# Distinct keys for each service and access, so a key sent to the wrong
# service, or the read key sent as the full one, is refused by the tests.
METADATA_KEY = "metadata-full-key-6f1c2a9d8e"
METADATA_READ_KEY = "metadata-read-key-3b7e5f0a4c"
VECTOR_KEY = "vector-full-key-9a2d4c6e8f"
VECTOR_READ_KEY = "vector-read-key-1e3f5a7b9c"
WRONG_KEY = "not-a-key-of-either-service-42"


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def api_key_header(key: str) -> tuple[tuple[str, str], ...]:
    return (("api-key", key),)


@pytest.fixture(scope="package")
def keyed_vector(
    tmp_path_factory: pytest.TempPathFactory, vector_server: RunningServer
) -> Iterator[RunningServer]:
    """The vector service with VECTOR_KEY / VECTOR_READ_KEY, on the session's
    warm embedding pool (no model load of its own)."""
    with vector_server_on_pool(
        vector_server,
        tmp_path_factory.mktemp("keyed-vector") / "chroma",
        api_key=VECTOR_KEY,
        read_only_api_key=VECTOR_READ_KEY,
    ) as running:
        yield running


def keyed_metadata_settings(database: Path, **overrides: object) -> MetadataSettings:
    return metadata_settings(
        database, api_key=METADATA_KEY, read_only_api_key=METADATA_READ_KEY, **overrides
    )


@contextlib.contextmanager
def running_metadata(settings: MetadataSettings) -> Iterator[RunningServer]:
    prepare_database(settings)
    with RunningServer.metadata(settings) as running:
        yield running


@contextlib.contextmanager
def metadata_stub(address: str) -> Iterator[pb_grpc.MetadataServiceStub]:
    with grpc.insecure_channel(address) as channel:
        yield pb_grpc.MetadataServiceStub(channel)
