"""Start-up checks of the TLS files: every unusable set is refused in one
line naming the setting and the file, before anything slow starts."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from askmojo import healthcheck
from askmojo.common import serving, tls
from askmojo.common.channels import ClientSecurity, open_channel
from tests.conftest import vector_settings
from tests.tls.conftest import Authority, Issued
from vector_service.config import VectorSettings

ROOT = Path(__file__).resolve().parents[2]


def settings(**files: object) -> VectorSettings:
    return vector_settings(Path("/nonexistent"), **files)


@pytest.fixture(scope="module")
def pair(authority: Authority) -> Issued:
    return authority.issue()


@pytest.fixture
def not_pem(tmp_path: Path) -> str:
    path = tmp_path / "garbage.pem"
    path.write_bytes(b"\x30\x82\x01\x0a binary, not PEM")
    return str(path)


def test_no_files_means_plaintext() -> None:
    assert tls.startup_refusal(settings()) is None
    assert tls.server_credentials(settings()) is None
    # An empty value, as `TLS_CERT_FILE=` in a compose file gives, is unset.
    blank = settings(tls_cert_file="", tls_key_file="", tls_client_ca_file="")
    assert tls.server_credentials(blank) is None
    assert tls.channel_credentials(None) is None
    assert tls.channel_credentials("", "", "") is None


def test_a_valid_set_is_accepted(pair: Issued, authority: Authority) -> None:
    files = settings(
        tls_cert_file=str(pair.cert),
        tls_key_file=str(pair.key),
        tls_client_ca_file=str(authority.ca_file),
    )
    assert tls.startup_refusal(files) is None
    assert isinstance(tls.server_credentials(files), grpc.ServerCredentials)


@pytest.fixture
def paths(
    pair: Issued, authority: Authority, not_pem: str, tmp_path: Path, openssl: str
) -> dict[str, str]:
    """The files test_an_unusable_set_is_refused_in_one_line names."""
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(
        [openssl, "pkcs8", "-topk8", "-in", pair.key, "-out", encrypted, "-passout", "pass:x"],
        check=True,
        capture_output=True,
    )
    return {
        "CERT": str(pair.cert),
        "KEY": str(pair.key),
        "CA": str(authority.ca_file),
        "MISSING": str(tmp_path / "missing.pem"),
        "NOT_PEM": not_pem,
        "OTHER_KEY": str(authority.issue().key),
        "ENCRYPTED_KEY": str(encrypted),
    }


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"tls_cert_file": "CERT"}, "TLS_CERT_FILE is set without TLS_KEY_FILE: set both"),
        ({"tls_key_file": "KEY"}, "TLS_KEY_FILE is set without TLS_CERT_FILE: set both"),
        (
            {"tls_client_ca_file": "CA"},
            "TLS_CLIENT_CA_FILE is set without TLS_CERT_FILE and TLS_KEY_FILE",
        ),
        (
            {"tls_cert_file": "MISSING", "tls_key_file": "KEY"},
            "TLS_CERT_FILE <MISSING>: cannot read it (No such file or directory)",
        ),
        (
            {"tls_cert_file": "NOT_PEM", "tls_key_file": "KEY"},
            "TLS_CERT_FILE <NOT_PEM>: not a PEM certificate",
        ),
        (
            {"tls_cert_file": "CERT", "tls_key_file": "NOT_PEM"},
            "TLS_KEY_FILE <NOT_PEM>: not a PEM private key",
        ),
        (
            {"tls_cert_file": "CERT", "tls_key_file": "OTHER_KEY"},
            "TLS_KEY_FILE <OTHER_KEY>: not the private key of the certificate in "
            "TLS_CERT_FILE <CERT>",
        ),
        (
            {"tls_cert_file": "CERT", "tls_key_file": "ENCRYPTED_KEY"},
            "TLS_KEY_FILE <ENCRYPTED_KEY>: the key is encrypted",
        ),
        (
            {"tls_cert_file": "CERT", "tls_key_file": "KEY", "tls_client_ca_file": "NOT_PEM"},
            "TLS_CLIENT_CA_FILE <NOT_PEM>: not a PEM CA certificate",
        ),
        (
            {"tls_cert_file": "CERT", "tls_key_file": "KEY", "tls_client_ca_file": "MISSING"},
            "TLS_CLIENT_CA_FILE <MISSING>: cannot read it",
        ),
    ],
)
def test_an_unusable_set_is_refused_in_one_line(
    given: dict[str, str], expected: str, paths: dict[str, str], pair: Issued
) -> None:
    files = settings(**{name: paths[value] for name, value in given.items()})
    for placeholder, path in paths.items():
        expected = expected.replace(f"<{placeholder}>", path)

    refusal = tls.startup_refusal(files)
    assert refusal is not None
    assert refusal.startswith(expected), refusal
    assert "\n" not in refusal
    key_body = pair.key.read_text().splitlines()[1]
    assert key_body not in refusal, "never echo the files' contents"
    # listen() refuses the same way (a server built without the start-up check).
    with pytest.raises(tls.TlsConfigError, match="^" + expected[:20]):
        asyncio.run(_listen(files))


async def _listen(settings: VectorSettings) -> None:
    server = grpc.aio.server()
    try:
        serving.listen(server, "127.0.0.1", 0, settings)
    finally:
        await server.stop(None)


def test_client_files_are_checked_when_the_channel_is_made(
    pair: Issued, authority: Authority, not_pem: str
) -> None:
    ca, cert, key = str(authority.ca_file), str(pair.cert), str(pair.key)
    assert isinstance(tls.channel_credentials(ca), grpc.ChannelCredentials)
    assert isinstance(tls.channel_credentials(ca, cert, key), grpc.ChannelCredentials)
    assert tls.client_refusal(ca, cert, key) is None
    names = (
        "VECTOR_SERVICE_CA_FILE",
        "VECTOR_SERVICE_CLIENT_CERT_FILE",
        "VECTOR_SERVICE_CLIENT_KEY_FILE",
    )
    assert tls.client_refusal(ca, cert, None, names=names) == (
        "VECTOR_SERVICE_CLIENT_CERT_FILE is set without VECTOR_SERVICE_CLIENT_KEY_FILE: set both"
    )
    assert tls.client_refusal(ca, None, key, names=names) == (
        "VECTOR_SERVICE_CLIENT_KEY_FILE is set without VECTOR_SERVICE_CLIENT_CERT_FILE: set both"
    )
    assert tls.client_refusal(not_pem, names=names) == (
        f"VECTOR_SERVICE_CA_FILE {not_pem}: not a PEM CA certificate "
        "(no -----BEGIN CERTIFICATE----- line)"
    )
    other_key = str(authority.issue("client").key)
    refusal = tls.client_refusal(ca, cert, other_key)
    assert refusal is not None and "not the private key of the certificate" in refusal
    with pytest.raises(tls.TlsConfigError, match=r"^CA file .*: cannot read it"):
        open_channel("127.0.0.1:1", ClientSecurity(ca_file=ca + ".missing"))


@pytest.mark.parametrize("service", ["metadata_service", "vector_service"])
def test_a_service_refuses_to_start_in_one_line(service: str, pair: Issued, tmp_path: Path) -> None:
    """Before the database is touched or the model loads."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TLS_", "METADATA_", "VECTOR_"))
    }
    env.update({"TLS_CERT_FILE": str(pair.cert), "PYTHONPATH": str(ROOT)})
    result = subprocess.run(
        [sys.executable, "-m", service],
        check=False,
        cwd=tmp_path,  # no .env here
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"{service}: TLS_CERT_FILE is set without TLS_KEY_FILE: set both\n"


def test_the_health_probe_reports_unusable_files_in_its_one_line(
    pair: Issued, capsys: pytest.CaptureFixture[str]
) -> None:
    assert healthcheck.main(["127.0.0.1:1", "--cert-file", str(pair.cert)]) == 1
    assert capsys.readouterr().out == (
        "127.0.0.1:1: --cert-file is set without --key-file: set both\n"
    )
