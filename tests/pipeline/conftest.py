"""The pair: a metadata service (real SQLite file) wired to the session's
real vector service (real model, embedded Chroma)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest

from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from askmojo.vector.v1 import vector_service_pb2_grpc as vpb_grpc
from metadata_service.config import MetadataSettings
from metadata_service.server import prepare_database
from tests.conftest import RunningServer
from tests.waiting import wait_until


@pytest.fixture
def paired_settings(
    backend_settings: MetadataSettings, vector_server: RunningServer
) -> MetadataSettings:
    """On SQLite, then on PostgreSQL (skipped with a reason when absent)."""
    return backend_settings.model_copy(
        update={
            "vector_service_address": vector_server.address,
            "index_poll_seconds": 0.2,
            "index_max_backoff": 0.5,
        }
    )


@pytest.fixture
def paired(paired_settings: MetadataSettings) -> Iterator[RunningServer]:
    prepare_database(paired_settings)
    with RunningServer.metadata(paired_settings) as running:
        yield running


@pytest.fixture
def stub(paired: RunningServer) -> Iterator[pb_grpc.MetadataServiceStub]:
    with grpc.insecure_channel(paired.address) as channel:
        yield pb_grpc.MetadataServiceStub(channel)


@contextlib.contextmanager
def metadata_stub(settings: MetadataSettings) -> Iterator[pb_grpc.MetadataServiceStub]:
    """A metadata service of its own (e.g. with a setting changed) and a stub to it."""
    prepare_database(settings)
    with RunningServer.metadata(settings) as running, grpc.insecure_channel(running.address) as ch:
        yield pb_grpc.MetadataServiceStub(ch)


@pytest.fixture(scope="session")
def vectors(vector_server: RunningServer) -> Iterator[vpb_grpc.VectorServiceStub]:
    with grpc.insecure_channel(vector_server.address) as channel:
        yield vpb_grpc.VectorServiceStub(channel)


@pytest.fixture
def collection(stub: pb_grpc.MetadataServiceStub) -> str:
    name = f"docs-{uuid.uuid4().hex[:8]}"
    stub.CreateCollection(pb.CreateCollectionRequest(name=name))
    return name


def eventually(
    check: Callable[[], bool],
    timeout: float = 60,
    what: str = "condition",
    describe: Callable[[], object] | None = None,
) -> None:
    wait_until(check, timeout, what, describe, interval=0.1)
