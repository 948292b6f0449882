"""The metadata service's client of the vector service over several replicas:
round robin, client-side health checking and retries, over real sockets.

Each replica is a small grpc.aio stand-in of the vector service (Query and
UpsertStream, plus the real grpc.health.v1 servicer) that counts what it
serves, so where every call landed is observed, not assumed. The real pair
is in tests/pipeline/test_replicas.py."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from askmojo.common import targets
from askmojo.common.targets import VECTOR_SERVICE
from askmojo.vector.v1 import vector_service_pb2 as vpb
from metadata_service import vector_client
from metadata_service.config import MetadataSettings
from metadata_service.vector_client import VectorClient, VectorRecord, VectorServiceUnavailable
from tests.waiting import until, until_answered

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Replica:
    """A vector-service stand-in on 127.0.0.1:<free port>. While
    `calls["die in stream"]` (shared by the replicas) is set, the next
    UpsertStream to reach its second batch takes its server down (every
    connection closed), as a SIGKILL would, and clears it."""

    def __init__(
        self,
        name: str,
        calls: Counter[str],
        credentials: grpc.ServerCredentials | None = None,
        port: int = 0,
    ) -> None:
        self.name = name
        self.calls = calls
        self.health = HealthServicer()
        self.server = grpc.aio.server()
        if credentials is None:
            self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        else:
            self.port = self.server.add_secure_port("127.0.0.1:0", credentials)
        self.stopped = False
        self._stopping: asyncio.Future[None] | None = None
        handlers = {
            "Query": grpc.unary_unary_rpc_method_handler(
                self._query,
                request_deserializer=vpb.QueryRequest.FromString,
                response_serializer=vpb.QueryResponse.SerializeToString,
            ),
            "UpsertStream": grpc.stream_stream_rpc_method_handler(
                self._upsert_stream,
                request_deserializer=vpb.UpsertStreamRequest.FromString,
                response_serializer=vpb.UpsertStreamResponse.SerializeToString,
            ),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(VECTOR_SERVICE, handlers),)
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        await self.health.set(VECTOR_SERVICE, SERVING)
        await self.server.start()

    async def stop(self) -> None:
        if self._stopping is None:
            self.stopped = True
            self._stopping = asyncio.ensure_future(self.server.stop(None))
        await asyncio.shield(self._stopping)

    async def _query(self, request: vpb.QueryRequest, context: object) -> vpb.QueryResponse:
        self.calls[self.name] += 1
        return vpb.QueryResponse(matches=[vpb.Match(id=self.name, score=1.0)])

    async def _upsert_stream(
        self, requests: AsyncIterator[vpb.UpsertStreamRequest], context: object
    ) -> AsyncIterator[vpb.UpsertStreamResponse]:
        seen = 0
        async for request in requests:
            seen += 1
            if seen == 2 and self.calls["die in stream"]:
                self.calls["die in stream"] = 0
                # Not awaited here: stopping cancels this very handler.
                self.stopped = True
                self._stopping = asyncio.ensure_future(self.server.stop(None))
                await asyncio.Event().wait()
            self.calls[f"{self.name}:batches"] += 1
            ok = status_pb2.Status(code=code_pb2.OK)
            yield vpb.UpsertStreamResponse(
                results=[vpb.RecordResult(id=r.id, status=ok) for r in request.records]
            )


async def started(
    calls: Counter[str], *names: str, credentials: grpc.ServerCredentials | None = None
) -> list[Replica]:
    replicas = [Replica(name, calls, credentials) for name in names]
    for replica in replicas:
        await replica.start()
    return replicas


async def close_all(client: VectorClient, *replicas: Replica) -> None:
    await client.close()
    for replica in replicas:
        await replica.stop()


def client_for(*replicas: Replica) -> VectorClient:
    settings = MetadataSettings.model_validate(
        {"vector_service_address": ",".join(r.address for r in replicas)}
    )
    return VectorClient(settings.vector_service_address, 4 * 1024 * 1024)


async def query_many(client: VectorClient, n: int) -> list[str]:
    landed = []
    for _ in range(n):
        (match,) = await client.query("c", "q", 1, None, time.monotonic() + 10)
        landed.append(match.id)
    return landed


def test_calls_go_round_robin_to_the_healthy_replicas_only() -> None:
    async def scenario() -> None:
        calls: Counter[str] = Counter()
        a, b = await started(calls, "a", "b")
        client = client_for(a, b)
        try:
            landed = Counter(await query_many(client, 40))
            # Round robin once both connections are up (the first calls may
            # all reach the first replica ready).
            assert landed["a"] > 0 and landed["b"] > 0, landed
            assert landed["a"] + landed["b"] == 40

            # b says NOT_SERVING (draining, Chroma lost): it gets no calls,
            # though its port still answers.
            await b.health.set(VECTOR_SERVICE, NOT_SERVING)

            async def only_a() -> bool:
                return set(await query_many(client, 6)) == {"a"}

            await until_answered(only_a, what="calls avoid the NOT_SERVING replica")
            assert set(await query_many(client, 20)) == {"a"}

            # SERVING again: back in the rotation.
            await b.health.set(VECTOR_SERVICE, SERVING)

            async def both() -> bool:
                return set(await query_many(client, 6)) == {"a", "b"}

            await until_answered(both, what="the replica back in the rotation")
        finally:
            await close_all(client, a, b)

    asyncio.run(scenario())


def test_a_replica_that_dies_costs_a_retry_not_a_failed_call() -> None:
    async def scenario() -> None:
        calls: Counter[str] = Counter()
        a, b = await started(calls, "a", "b")
        client = client_for(a, b)
        try:
            assert set(await query_many(client, 20)) == {"a", "b"}
            await a.stop()
            # Every call answers (gRPC's retry policy picks b), none fails.
            assert set(await query_many(client, 40)) == {"b"}

            # A stream whose replica dies at its second batch: the batches
            # it left unanswered are resent to the other, every record acked.
            (c,) = await started(calls, "c")
            client_c = client_for(b, c)
            calls["die in stream"] = 1
            batches = [[VectorRecord(f"{n}#{i}", "text", {}) for i in range(3)] for n in range(5)]
            acks = [
                ack
                async for answer in client_c.upsert_stream("c", batches, time.monotonic() + 20)
                for ack in answer
            ]
            assert [a.id for a in acks] == [r.id for batch in batches for r in batch]
            assert all(a.ok for a in acks)
            assert client_c.resent_batches == 4  # batches 2..5 of the broken stream
            assert b.stopped != c.stopped  # exactly one replica died
            await client_c.close()
            await c.stop()

            # With no replica left the call fails as an outage (the work
            # stays PENDING), once the retries are spent.
            await b.stop()
            with pytest.raises(VectorServiceUnavailable):
                await query_many(client, 1)
        finally:
            await client.close()

    asyncio.run(scenario())


def test_with_every_replica_unreachable_calls_fail_at_once_and_resume_when_one_returns() -> None:
    """While the channel knows no replica reachable (TRANSIENT_FAILURE),
    a call is not made at all: its outage is answered at once (the work
    stays PENDING, a HYBRID Search goes keyword-only) instead of after
    gRPC's retries. The channel keeps reconnecting meanwhile, so calls
    resume as soon as a replica is back."""

    async def scenario() -> None:
        calls: Counter[str] = Counter()
        (a,) = await started(calls, "a")
        client = client_for(a)
        try:
            assert await query_many(client, 2) == ["a", "a"]
            await a.stop()
            with pytest.raises(VectorServiceUnavailable):
                await query_many(client, 1)
            await until(
                lambda: client._channel.get_state() is grpc.ChannelConnectivity.TRANSIENT_FAILURE,
                within=10,
                what="the channel knows the replica unreachable",
            )
            with pytest.raises(VectorServiceUnavailable) as raised:
                await query_many(client, 1)
            assert "not called" in raised.value.detail
            batches = [[VectorRecord("x#0", "text", {})]]
            with pytest.raises(VectorServiceUnavailable) as raised:
                async for _ in client.upsert_stream("c", batches, time.monotonic() + 10):
                    pass
            assert "not called" in raised.value.detail
            assert calls["a"] == 2  # nothing reached a replica meanwhile

            # The replica returns on its address: the channel, reconnecting
            # on its own backoff, lets calls through again.
            back = Replica("a", calls, port=a.port)
            await back.start()

            async def answered() -> bool:
                try:
                    return await query_many(client, 1) == ["a"]
                except VectorServiceUnavailable:
                    return False

            await until_answered(answered, what="a call after the replica came back", within=30)
            await back.stop()
        finally:
            await close_all(client, a)

    asyncio.run(scenario())


def test_host_names_are_looked_up_again_after_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """A list of host names is resolved by the client, not by gRPC: a name
    that did not resolve at start-up (its container not yet there) or whose
    address changed is found by a new look-up once calls fail."""
    table: dict[str, str] = {}

    def getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list[Any]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (table[host], port))]

    monkeypatch.setattr(targets.socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(vector_client, "_LOOKUP_SECONDS", 0.0)

    async def scenario() -> None:
        calls: Counter[str] = Counter()
        a, b = await started(calls, "a", "b")
        table["replica-a.test"] = "127.0.0.1"  # replica-b.test: not yet
        client = VectorClient(f"replica-a.test:{a.port},replica-b.test:{b.port}", 4 * 1024 * 1024)
        try:
            assert set(await query_many(client, 10)) == {"a"}
            table["replica-b.test"] = "127.0.0.1"
            await a.stop()

            async def b_answers() -> bool:
                try:
                    return set(await query_many(client, 4)) == {"b"}
                except VectorServiceUnavailable:
                    return False  # the failure that starts a new look-up

            await until_answered(b_answers, what="the replica found by a new look-up answers")
        finally:
            await close_all(client, a, b)

    asyncio.run(scenario())


def test_a_dns_target_balances_over_what_the_name_resolves_to() -> None:
    """compose.yaml's form (`dns:///vector:50052`): gRPC resolves the name
    itself; `localhost` may also resolve to ::1, where nothing listens, and
    that address simply gets no calls."""

    async def scenario() -> None:
        calls: Counter[str] = Counter()
        (a,) = await started(calls, "a")
        client = VectorClient(f"dns:///localhost:{a.port}", 4 * 1024 * 1024)
        try:
            assert set(await query_many(client, 10)) == {"a"}
        finally:
            await close_all(client, a)

    asyncio.run(scenario())


def test_malformed_addresses_are_refused_naming_the_setting() -> None:
    for bad, problem in [
        ("127.0.0.1:1,,127.0.0.1:2", "entry 2 of 3 is empty"),
        ("10.0.0.1:1,[::1]:2", "mixes IPv4 and IPv6"),
        ("vector:0", "port 0 is not between 1 and 65535"),
        ("vector:50052,vector", "expected HOST:PORT"),
        ("dns:///", "names nothing"),
    ]:
        with pytest.raises(ValueError, match="VECTOR_SERVICE_ADDRESS") as raised:
            MetadataSettings.model_validate({"vector_service_address": bad})
        assert problem in str(raised.value), (bad, str(raised.value))
    for good in ("vector:50052", "a:1,b:2", "[::1]:1,[::2]:2", "dns:///vector:50052", ""):
        MetadataSettings.model_validate({"vector_service_address": good})


def test_the_service_refuses_to_start_on_a_malformed_list(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "VECTOR_SERVICE_ADDRESS": "127.0.0.1:50052,,127.0.0.1:50053",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'metadata.db'}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "metadata_service"],
        env=env,
        cwd=tmp_path,  # no .env
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    (line,) = [x for x in done.stderr.splitlines() if "VECTOR_SERVICE_ADDRESS" in x]
    assert "entry 2 of 3 is empty" in line
    assert not (tmp_path / "metadata.db").exists()  # refused before anything
