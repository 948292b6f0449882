"""Targets, retries (gRPC's own policy) and deadlines, over real sockets: a
small stand-in server that answers UNAVAILABLE on demand, a port nobody
listens on, one that accepts and never answers, and the real service."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from askmojo.client import (
    DEFAULT_RETRY,
    NO_RETRIES,
    AsyncClient,
    Client,
    DeadlineExceeded,
    Unavailable,
    resolve_target,
)
from askmojo.client._channel import METADATA_SERVICE, channel_options
from askmojo.metadata.v1 import metadata_service_pb2 as pb
from tests.conftest import RunningServer


class Flaky:
    """MetadataService's GetCollection and CreateCollection: UNAVAILABLE for
    the first `failures` attempts of each, then an answer; counts attempts."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts: dict[str, int] = {}
        self._lock = threading.Lock()

    def _answer(self, method: str, name: str, context: grpc.ServicerContext) -> pb.Collection:
        with self._lock:
            self.attempts[method] = self.attempts.get(method, 0) + 1
            attempt = self.attempts[method]
        if attempt <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        return pb.Collection(name=name, dimension=384)

    def handler(self) -> grpc.GenericRpcHandler:
        def get(request: pb.GetCollectionRequest, context: grpc.ServicerContext) -> pb.Collection:
            return self._answer("GetCollection", request.name, context)

        def create(
            request: pb.CreateCollectionRequest, context: grpc.ServicerContext
        ) -> pb.Collection:
            return self._answer("CreateCollection", request.name, context)

        def unary(fn: object, request_type: type) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn,
                request_deserializer=request_type.FromString,  # type: ignore[attr-defined]
                response_serializer=pb.Collection.SerializeToString,
            )

        return grpc.method_handlers_generic_handler(
            "askmojo.metadata.v1.MetadataService",
            {
                "GetCollection": unary(get, pb.GetCollectionRequest),
                "CreateCollection": unary(create, pb.CreateCollectionRequest),
            },
        )


@pytest.fixture
def flaky() -> Iterator[tuple[Flaky, str]]:
    service = Flaky(failures=2)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((service.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield service, f"127.0.0.1:{port}"
    server.stop(None)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_unavailable_is_retried_on_idempotent_calls(flaky: tuple[Flaky, str]) -> None:
    service, address = flaky
    with Client(address) as client:
        assert client.collection("notes").name == "notes"
    assert service.attempts["GetCollection"] == 3


def test_create_is_not_retried(flaky: tuple[Flaky, str]) -> None:
    service, address = flaky
    with Client(address) as client, pytest.raises(Unavailable, match="try again"):
        client.create_collection("notes")
    assert service.attempts["CreateCollection"] == 1


def test_retries_can_be_turned_off(flaky: tuple[Flaky, str]) -> None:
    service, address = flaky
    with Client(address, retry=NO_RETRIES) as client, pytest.raises(Unavailable):
        client.collection("notes")
    assert service.attempts["GetCollection"] == 1


def test_asyncio_client_retries_too(flaky: tuple[Flaky, str]) -> None:
    service, address = flaky

    async def main() -> str:
        async with AsyncClient(address) as client:
            return (await client.collection("notes")).name

    assert asyncio.run(main()) == "notes"
    assert service.attempts["GetCollection"] == 3


def test_two_addresses_one_dead_still_answer(server: RunningServer) -> None:
    address = f"127.0.0.1:{closed_port()},{server.address}"
    with Client(address) as client:
        for _ in range(6):  # round robin: none of them lands on the dead one
            assert client.collections() == []


def test_a_dead_address_alone_is_unavailable() -> None:
    with Client(f"127.0.0.1:{closed_port()}") as client, pytest.raises(Unavailable):
        client.collections()


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """Accepts TCP connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def test_deadline_is_respected(silent_listener: str) -> None:
    with Client(silent_listener, timeout=0.3) as client:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            client.collections()
        with pytest.raises(DeadlineExceeded):
            client.stats(timeout=0.5)  # per call
        assert time.monotonic() - started < 5


def test_targets() -> None:
    assert resolve_target("localhost:50051") == ("localhost:50051", None, False)
    assert resolve_target("dns:///metadata:50051")[0] == "dns:///metadata:50051"
    # The first address is the authority TLS checks (gRPC's own for a list
    # passes no hostname check).
    assert resolve_target("10.0.0.1:1, 10.0.0.2:2") == (
        "ipv4:10.0.0.1:1,10.0.0.2:2",
        "10.0.0.1:1",
        True,
    )
    assert resolve_target("[::1]:1,[::2]:2") == ("ipv6:[::1]:1,[::2]:2", "[::1]:1", True)
    target, authority, balanced = resolve_target("localhost:1,127.0.0.1:2")
    assert target == "ipv4:127.0.0.1:1,127.0.0.1:2" and authority == "localhost:1" and balanced
    for bad in ("", " ", "nohost,10.0.0.1:1", "10.0.0.1:1,[::1]:2"):
        with pytest.raises(ValueError):
            resolve_target(bad)


def test_service_config_balances_and_retries_only_idempotent_methods() -> None:
    options = dict(
        channel_options(resolve_target("10.0.0.1:1,10.0.0.2:2"), DEFAULT_RETRY, [METADATA_SERVICE])
    )
    config = json.loads(str(options["grpc.service_config"]))
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    [method_config] = config["methodConfig"]
    names = {n["method"] for n in method_config["name"]}
    assert "Search" in names and "UpsertDocuments" in names
    assert not names & {"CreateCollection", "DeleteCollection", "IngestDocuments"}
    assert method_config["retryPolicy"]["retryableStatusCodes"] == [
        "UNAVAILABLE",
        "RESOURCE_EXHAUSTED",
    ]


def test_ingest_reads_no_further_ahead_than_its_window(server: RunningServer) -> None:
    """At most max_in_flight batches wait for an answer (plus one being read):
    a slow consumer slows the reading of the source."""
    pulled = 0

    def documents() -> Iterator[dict[str, str]]:
        nonlocal pulled
        for i in range(40):
            pulled += 1
            yield {"id": f"d{i:02}", "text": f"document {i}"}

    with Client(server.address) as client:
        client.create_collection("window")
        seen = 0
        for result in client.ingest("window", documents(), batch_size=2, max_in_flight=2):
            assert result.ok
            seen += 1
            assert pulled - seen <= (2 + 1) * 2 + 1, (pulled, seen)
        assert seen == 40
