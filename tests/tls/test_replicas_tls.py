"""Vector replicas over TLS: the metadata service's client checks every
replica's certificate against the name written in VECTOR_SERVICE_ADDRESS
(the first host of a list: askmojo.common.targets's authority), and health
checking and round robin work over TLS as in plaintext."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import pytest

from askmojo.common.channels import ClientSecurity
from metadata_service.vector_client import VectorClient, VectorServiceUnavailable
from tests.metadata_service.test_vector_balancing import close_all, query_many, started
from tests.tls.conftest import Authority


def credentials(authority: Authority) -> grpc.ServerCredentials:
    issued = authority.issue()  # SANs: localhost, 127.0.0.1
    return grpc.ssl_server_credentials([(issued.key.read_bytes(), issued.cert.read_bytes())])


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_replicas_over_tls(authority: Authority, host: str) -> None:
    async def scenario() -> None:
        calls: Counter[str] = Counter()
        a, b = await started(calls, "a", "b", credentials=credentials(authority))
        address = f"{host}:{a.port},{host}:{b.port}"
        client = VectorClient(
            address, 4 * 1024 * 1024, security=ClientSecurity(ca_file=str(authority.ca_file))
        )
        try:
            assert set(await query_many(client, 20)) == {"a", "b"}
        finally:
            await close_all(client, a, b)

    asyncio.run(scenario())


def test_a_replica_with_an_unknown_certificate_gets_no_calls(authority: Authority) -> None:
    """A CA the client does not trust: no call succeeds, and the failure is
    an outage to retry (work stays PENDING), not a refusal of the documents."""

    async def scenario() -> None:
        calls: Counter[str] = Counter()
        stranger = Authority(authority.directory, "stranger")
        a, b = await started(calls, "a", "b", credentials=credentials(stranger))
        client = VectorClient(
            f"localhost:{a.port},localhost:{b.port}",
            4 * 1024 * 1024,
            security=ClientSecurity(ca_file=str(authority.ca_file)),
        )
        try:
            with pytest.raises(VectorServiceUnavailable):
                await query_many(client, 1)
            assert not calls
        finally:
            await close_all(client, a, b)

    asyncio.run(scenario())
