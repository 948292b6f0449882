"""Certificates made at test time with the `openssl` CLI: a CA (and a second,
unrelated one), server certificates for localhost / 127.0.0.1, client
certificates for mTLS. Skipped with a reason when openssl is not installed."""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

_OPENSSL = shutil.which("openssl")

_CONFIG = """\
[req]
distinguished_name = subject
prompt = no
[subject]
CN = askmojo test
[authority]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def _openssl(*args: str | Path) -> None:
    assert _OPENSSL is not None
    subprocess.run([_OPENSSL, *map(str, args)], check=True, capture_output=True, timeout=30)


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as files, and the serial that tells it apart."""

    cert: Path
    key: Path
    serial: int

    def install(self, cert: Path, key: Path) -> None:
        """Puts this pair where a server reads its files, each file replaced
        atomically, key first (the order cert-manager's writes may reach a
        reader in: a moment when the key does not match the certificate)."""
        for source, target in ((self.key, key), (self.cert, cert)):
            staging = target.with_name(f".{target.name}.new")
            shutil.copyfile(source, staging)
            os.replace(staging, target)


class Authority:
    """A CA on disk that issues certificates with fresh serials."""

    _names = itertools.count()

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.name = name
        directory.mkdir(parents=True, exist_ok=True)
        self._config = directory / "openssl.cnf"
        self._config.write_text(_CONFIG)
        self.ca_file = directory / f"{name}-ca.pem"
        self._ca_key = directory / f"{name}-ca.key"
        _openssl(
            "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", self._ca_key, "-out", self.ca_file, "-days", "2",
            "-subj", f"/CN={name} test CA", "-config", self._config, "-extensions", "authority",
        )  # fmt: skip

    def issue(self, usage: str = "server") -> Issued:
        """A P-256 certificate for `usage` ("server": SANs localhost and
        127.0.0.1; "client": clientAuth)."""
        stem = self.directory / f"{self.name}-{usage}-{next(self._names)}"
        key, request, cert = (stem.with_suffix(suffix) for suffix in (".key", ".csr", ".pem"))
        serial = secrets.randbits(62) + 1
        _openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", key, "-out", request, "-subj", f"/CN={usage} {serial}",
            "-config", self._config,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", request, "-CA", self.ca_file, "-CAkey", self._ca_key,
            "-set_serial", str(serial), "-days", "2", "-out", cert,
            "-extfile", self._config, "-extensions", usage,
        )  # fmt: skip
        return Issued(cert, key, serial)


@pytest.fixture(scope="session")
def openssl() -> str:
    if _OPENSSL is None:
        pytest.skip(
            "the openssl CLI is not installed: the TLS tests make their certificates with it"
        )
    return _OPENSSL


@pytest.fixture(scope="session")
def authority(openssl: str, tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority(tmp_path_factory.mktemp("pki"), "main")


@pytest.fixture(scope="session")
def other_authority(openssl: str, tmp_path_factory: pytest.TempPathFactory) -> Authority:
    """A CA nobody trusts."""
    return Authority(tmp_path_factory.mktemp("pki-other"), "other")


def served_serial(port: int, ca_file: Path, client: Issued | None = None) -> int:
    """The serial of the certificate a TLS server on 127.0.0.1:`port` presents
    to a new connection, verified against `ca_file` (as a gRPC client would:
    ALPN h2, hostname checked)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.set_alpn_protocols(["h2"])
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        peer = tls.getpeercert()
    assert peer is not None
    return int(str(peer["serialNumber"]), 16)
