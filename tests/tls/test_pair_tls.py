"""The pair on TLS over real sockets: the metadata service serves TLS and
calls the vector service over TLS (VECTOR_SERVICE_CA_FILE) or mTLS (and a
client certificate); documents reach INDEXED and are found.

One vector service for the module (the model loads once) listens on two
ports through `serving.listen`: TLS, and mTLS (TLS_CLIENT_CA_FILE)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from askmojo.common import serving
from askmojo.common.channels import ClientSecurity, open_channel
from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from metadata_service.server import prepare_database
from tests.conftest import RunningServer, metadata_settings, on_lent_pool, vector_settings
from tests.tls.conftest import Authority, served_serial

TEXTS = {
    "sqlite": "SQLite in write-ahead-log mode lets readers keep reading while one writer commits.",
    "cats": "Cats sleep for most of the day and hunt small animals at dawn and dusk.",
}


@dataclass(frozen=True)
class VectorOnTls:
    running: RunningServer
    mtls_port: int

    @property
    def tls_address(self) -> str:
        return self.running.address

    @property
    def mtls_address(self) -> str:
        return f"127.0.0.1:{self.mtls_port}"


@pytest.fixture(scope="module")
def vector_on_tls(
    authority: Authority, tmp_path_factory: pytest.TempPathFactory, vector_server: RunningServer
) -> Iterator[VectorOnTls]:
    """On the session's warm embedding pool (no model load of its own)."""
    issued = authority.issue()
    settings = vector_settings(
        tmp_path_factory.mktemp("vector-tls") / "chroma",
        tls_cert_file=str(issued.cert),
        tls_key_file=str(issued.key),
    )
    mtls = settings.model_copy(update={"tls_client_ca_file": str(authority.ca_file)})
    ports: list[int] = []
    create_on_pool = on_lent_pool(vector_server, settings)

    def create() -> tuple[Any, int]:
        server, port = create_on_pool()
        ports.append(serving.listen(server.grpc_server, "127.0.0.1", 0, mtls))
        return server, port

    with RunningServer(create, settings) as running:
        yield VectorOnTls(running, ports[0])


@contextlib.contextmanager
def metadata_on_tls(
    directory: Path, authority: Authority, vector_address: str, **client_files: str
) -> Iterator[pb_grpc.MetadataServiceStub]:
    """A metadata service on TLS calling `vector_address` with `client_files`
    (VECTOR_SERVICE_* settings), and a stub that reaches it over TLS."""
    issued = authority.issue()
    settings = metadata_settings(
        directory / "metadata.db",
        tls_cert_file=str(issued.cert),
        tls_key_file=str(issued.key),
        vector_service_address=vector_address,
        index_poll_seconds=0.2,
        index_max_backoff=0.5,
        **client_files,
    )
    prepare_database(settings)
    with (
        RunningServer.metadata(settings) as running,
        open_channel(running.address, ClientSecurity(ca_file=str(authority.ca_file))) as channel,
    ):
        yield pb_grpc.MetadataServiceStub(channel)


def upsert_and_search(stub: pb_grpc.MetadataServiceStub) -> tuple[list[int], str]:
    """(the documents' states, the best hit's document id)."""
    collection = f"docs-{uuid.uuid4().hex[:8]}"
    stub.CreateCollection(pb.CreateCollectionRequest(name=collection), timeout=30)
    response = stub.UpsertDocuments(
        pb.UpsertDocumentsRequest(
            collection=collection,
            documents=[pb.Document(id=key, text=text) for key, text in TEXTS.items()],
        ),
        timeout=120,
    )
    hits = stub.Search(
        pb.SearchRequest(collection=collection, query="Which database lets readers read?"),
        timeout=60,
    ).hits
    return [result.state for result in response.results], hits[0].document_id


def test_both_services_on_tls_index_and_search(
    tmp_path: Path, authority: Authority, vector_on_tls: VectorOnTls
) -> None:
    ca_file = str(authority.ca_file)
    with metadata_on_tls(
        tmp_path, authority, vector_on_tls.tls_address, vector_service_ca_file=ca_file
    ) as stub:
        states, best = upsert_and_search(stub)
    assert states == [pb.UPSERT_STATE_INDEXED] * len(TEXTS)
    assert best == "sqlite"


def test_metadata_to_vector_over_mtls(
    tmp_path: Path, authority: Authority, vector_on_tls: VectorOnTls
) -> None:
    client = authority.issue("client")
    with metadata_on_tls(
        tmp_path,
        authority,
        vector_on_tls.mtls_address,
        vector_service_ca_file=str(authority.ca_file),
        vector_service_client_cert_file=str(client.cert),
        vector_service_client_key_file=str(client.key),
    ) as stub:
        states, best = upsert_and_search(stub)
    assert states == [pb.UPSERT_STATE_INDEXED] * len(TEXTS)
    assert best == "sqlite"


def test_mtls_vector_service_refuses_a_metadata_service_without_a_client_certificate(
    tmp_path: Path, authority: Authority, vector_on_tls: VectorOnTls
) -> None:
    ca_file = str(authority.ca_file)
    with metadata_on_tls(
        tmp_path, authority, vector_on_tls.mtls_address, vector_service_ca_file=ca_file
    ) as stub:
        stub.CreateCollection(pb.CreateCollectionRequest(name="docs"), timeout=30)
        response = stub.UpsertDocuments(
            pb.UpsertDocumentsRequest(
                collection="docs", documents=[pb.Document(id="a", text=TEXTS["cats"])]
            ),
            timeout=120,
        )
        assert [result.state for result in response.results] == [pb.UPSERT_STATE_PENDING]
        with pytest.raises(grpc.RpcError) as caught:
            stub.Search(
                pb.SearchRequest(collection="docs", query="cats", mode=pb.SEARCH_MODE_DENSE),
                timeout=60,
            )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_vector_service_serves_its_certificate_on_both_ports(
    authority: Authority, vector_on_tls: VectorOnTls
) -> None:
    client = authority.issue("client")
    tls_serial = served_serial(vector_on_tls.running.port, authority.ca_file)
    assert served_serial(vector_on_tls.mtls_port, authority.ca_file, client) == tls_serial
