"""TLS and mTLS on a real metadata service over real sockets (the vector
service binds through the same `serving.listen`; test_pair_tls.py runs the
pair): who is let in, the CLI and the health probe, and certificates
rotated under a running server."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from askmojo import cli, healthcheck
from askmojo.common.channels import NO_SECURITY, ClientSecurity, open_channel
from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from metadata_service.server import prepare_database
from tests.conftest import RunningServer, metadata_settings
from tests.metadata_service.test_workers import start_service
from tests.tls.conftest import Authority, Issued, served_serial
from tests.waiting import wait_until

_TLS_LOGGER = "askmojo.common.tls"


@dataclass
class TlsServer:
    """A running metadata service on TLS and the files it serves, which a
    test may replace."""

    running: RunningServer
    cert: Path
    key: Path
    client_ca: Path | None

    @property
    def port(self) -> int:
        return self.running.port

    @property
    def address(self) -> str:
        return self.running.address


@contextlib.contextmanager
def tls_server(
    directory: Path, issued: Issued, client_authority: Authority | None = None
) -> Iterator[TlsServer]:
    cert, key = directory / "tls" / "server.pem", directory / "tls" / "server.key"
    cert.parent.mkdir()
    issued.install(cert, key)
    client_ca = None
    if client_authority is not None:
        client_ca = directory / "tls" / "clients-ca.pem"
        client_ca.write_bytes(client_authority.ca_file.read_bytes())
    settings = metadata_settings(
        directory / "metadata.db",
        tls_cert_file=str(cert),
        tls_key_file=str(key),
        tls_client_ca_file=str(client_ca) if client_ca else None,
    )
    prepare_database(settings)
    with RunningServer.metadata(settings) as running:
        yield TlsServer(running, cert, key, client_ca)


def list_collections(address: str, security: ClientSecurity) -> pb.ListCollectionsResponse:
    with open_channel(address, security) as channel:
        stub = pb_grpc.MetadataServiceStub(channel)
        response: pb.ListCollectionsResponse = stub.ListCollections(
            pb.ListCollectionsRequest(), timeout=10
        )
        return response


def refused(address: str, security: ClientSecurity) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        list_collections(address, security)
    code: grpc.StatusCode = caught.value.code()
    return code


@pytest.fixture
def server(tmp_path: Path, authority: Authority) -> Iterator[TlsServer]:
    with tls_server(tmp_path, authority.issue()) as running:
        yield running


@pytest.fixture
def mtls_server(tmp_path: Path, authority: Authority) -> Iterator[TlsServer]:
    with tls_server(tmp_path, authority.issue(), client_authority=authority) as running:
        yield running


def test_a_client_trusting_the_ca_is_served(server: TlsServer, authority: Authority) -> None:
    list_collections(server.address, ClientSecurity(ca_file=str(authority.ca_file)))


def test_plaintext_client_is_refused(server: TlsServer) -> None:
    assert refused(server.address, NO_SECURITY) == grpc.StatusCode.UNAVAILABLE


def test_client_trusting_another_ca_is_refused(
    server: TlsServer, other_authority: Authority
) -> None:
    security = ClientSecurity(ca_file=str(other_authority.ca_file))
    assert refused(server.address, security) == grpc.StatusCode.UNAVAILABLE


def test_mtls_refuses_a_client_without_a_certificate_and_serves_one_with(
    mtls_server: TlsServer, authority: Authority, other_authority: Authority
) -> None:
    ca_file = str(authority.ca_file)
    assert refused(mtls_server.address, ClientSecurity(ca_file=ca_file)) == (
        grpc.StatusCode.UNAVAILABLE
    )
    stranger = other_authority.issue("client")
    assert (
        refused(
            mtls_server.address,
            ClientSecurity(
                ca_file=ca_file, cert_file=str(stranger.cert), key_file=str(stranger.key)
            ),
        )
        == grpc.StatusCode.UNAVAILABLE
    )
    client = authority.issue("client")
    list_collections(
        mtls_server.address,
        ClientSecurity(ca_file=ca_file, cert_file=str(client.cert), key_file=str(client.key)),
    )


def test_cli_and_health_probe_with_a_ca_file(
    server: TlsServer, authority: Authority, capsys: pytest.CaptureFixture[str]
) -> None:
    security = ["--ca-file", str(authority.ca_file)]
    assert cli.main(["--address", server.address, *security, "stats"]) == 0
    assert healthcheck.main([server.address, *security]) == 0
    assert "SERVING" in capsys.readouterr().out
    # A plaintext probe of a TLS server is told no, in its one line.
    assert healthcheck.main([server.address]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().out


def test_cli_and_health_probe_with_a_client_certificate(
    mtls_server: TlsServer, authority: Authority, capsys: pytest.CaptureFixture[str]
) -> None:
    client = authority.issue("client")
    security = ["--ca-file", str(authority.ca_file)]
    security += ["--cert-file", str(client.cert), "--key-file", str(client.key)]
    assert cli.main(["--address", mtls_server.address, *security, "stats"]) == 0
    assert healthcheck.main([mtls_server.address, *security]) == 0
    assert "SERVING" in capsys.readouterr().out
    # Without the client certificate the probe says so in its one line.
    assert healthcheck.main([mtls_server.address, "--ca-file", str(authority.ca_file)]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().out


def test_a_rotated_certificate_is_served_to_new_connections_without_restart(
    server: TlsServer, authority: Authority
) -> None:
    ca_file = authority.ca_file
    before = served_serial(server.port, ca_file)
    # A channel opened before the rotation keeps working on its connection.
    with open_channel(server.address, ClientSecurity(ca_file=str(ca_file))) as channel:
        stub = pb_grpc.MetadataServiceStub(channel)
        stub.ListCollections(pb.ListCollectionsRequest(), timeout=10)
        rotated = authority.issue()
        rotated.install(server.cert, server.key)
        assert served_serial(server.port, ca_file) == rotated.serial != before
        stub.ListCollections(pb.ListCollectionsRequest(), timeout=10)


def test_a_certificate_from_a_new_ca_is_served_to_clients_trusting_only_it(
    server: TlsServer, authority: Authority, tmp_path: Path
) -> None:
    new_authority = Authority(tmp_path / "new-pki", "rotated")
    new_authority.issue().install(server.cert, server.key)
    # A gRPC client that trusts only the new CA connects...
    list_collections(server.address, ClientSecurity(ca_file=str(new_authority.ca_file)))
    # ...and one that trusts only the old CA no longer does.
    security = ClientSecurity(ca_file=str(authority.ca_file))
    assert refused(server.address, security) == grpc.StatusCode.UNAVAILABLE


def test_a_broken_replacement_keeps_the_previous_certificate_served(
    server: TlsServer, authority: Authority, caplog: pytest.LogCaptureFixture
) -> None:
    ca_file = authority.ca_file
    original = served_serial(server.port, ca_file)
    caplog.set_level(logging.WARNING, logger=_TLS_LOGGER)

    # Half a rotation: the new key is in place, the certificate is still the
    # old one, so they do not match.
    pending = authority.issue()
    server.key.write_bytes(pending.key.read_bytes())
    assert served_serial(server.port, ca_file) == original
    assert served_serial(server.port, ca_file) == original
    warnings = [r for r in caplog.records if r.name == _TLS_LOGGER]
    assert len(warnings) == 1, "one warning per change, not one per handshake"
    assert "not the private key of the certificate" in warnings[0].getMessage()

    # Not PEM at all: still the previous certificate, a second warning.
    server.cert.write_bytes(b"this is not a certificate\n")
    assert served_serial(server.port, ca_file) == original
    list_collections(server.address, ClientSecurity(ca_file=str(ca_file)))
    assert len([r for r in caplog.records if r.name == _TLS_LOGGER]) == 2

    # The rotation completes: its certificate is served from then on.
    server.cert.write_bytes(pending.cert.read_bytes())
    assert served_serial(server.port, ca_file) == pending.serial


def test_a_rotated_client_ca_admits_clients_of_the_new_ca(
    mtls_server: TlsServer, authority: Authority, other_authority: Authority
) -> None:
    assert mtls_server.client_ca is not None
    mtls_server.client_ca.write_bytes(other_authority.ca_file.read_bytes())
    newcomer = other_authority.issue("client")
    list_collections(
        mtls_server.address,
        ClientSecurity(
            ca_file=str(authority.ca_file),
            cert_file=str(newcomer.cert),
            key_file=str(newcomer.key),
        ),
    )


def test_production_workers_serve_tls_and_each_follows_a_rotation(
    tmp_path: Path, authority: Authority
) -> None:
    """`python -m metadata_service` with forked workers on one port: each
    worker builds its credentials after the fork, and each reloads."""
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    authority.issue().install(cert, key)
    client = authority.issue("client")
    service = start_service(
        {
            "ENVIRONMENT": "production",
            "ALLOW_UNAUTHENTICATED": "true",
            "WORKERS": "2",
            "METADATA_PORT": "0",
            "METADATA_HOST": "127.0.0.1",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'metadata.db'}",
            "LOG_FORMAT": "json",
            "TLS_CERT_FILE": str(cert),
            "TLS_KEY_FILE": str(key),
            "TLS_CLIENT_CA_FILE": str(authority.ca_file),
        },
        tmp_path,
    )
    try:
        probe = [service.address, "--ca-file", str(authority.ca_file)]
        probe += ["--cert-file", str(client.cert), "--key-file", str(client.key)]
        wait_until(lambda: healthcheck.main(probe) == 0, timeout=60, what="workers serving")
        rotated = authority.issue()
        rotated.install(cert, key)
        # The kernel spreads connections over the workers: enough of them
        # reach both (a worker still on the old certificate would show).
        serials = {served_serial(service.port, authority.ca_file, client) for _ in range(20)}
        assert serials == {rotated.serial}
        assert service.stop() == 0
    finally:
        if service.proc.poll() is None:
            service.proc.kill()
            service.proc.wait()
