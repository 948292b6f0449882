"""TLS and mTLS from PEM files (DESIGN.md §9), re-read when they change.

Server: TLS_CERT_FILE + TLS_KEY_FILE turn TLS on; TLS_CLIENT_CA_FILE also
requires every client to present a certificate signed by that CA (mTLS). A
mesh or cert-manager rotates short-lived certificates in place, so the server
credentials are gRPC's dynamic ones: before every handshake gRPC asks
`_RotatingServerFiles` whether the files changed, and a changed, valid set is
served to new connections without a restart (open connections keep theirs).

Clients (the metadata service's client of the vector service, the CLI, the
health probe): a CA file alone means TLS; a certificate and key as well mean
mTLS.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from dataclasses import dataclass

import grpc

from askmojo.common.settings import ServiceSettings

_LOGGER = logging.getLogger(__name__)

_CERTIFICATE_MARKER = b"-----BEGIN CERTIFICATE-----"
_KEY_MARKERS = (
    b"-----BEGIN PRIVATE KEY-----",
    b"-----BEGIN RSA PRIVATE KEY-----",
    b"-----BEGIN EC PRIVATE KEY-----",
)
# Both the PKCS#8 and the legacy OpenSSL encryption headers.
_ENCRYPTED_KEY_MARKERS = (b"-----BEGIN ENCRYPTED PRIVATE KEY-----", b"Proc-Type: 4,ENCRYPTED")
# A replacement is read as (stat, read, check, stat) and taken only when both
# stats agree; a writer still busy after this many tries at start-up is an error.
_CONSISTENT_READ_ATTEMPTS = 5


class TlsConfigError(ValueError):
    """Why the TLS files cannot be used, in one line naming the setting and
    the file (never their contents)."""


class _FilesChanging(Exception):
    """The files changed while being read: try again on the next handshake."""


@dataclass(frozen=True)
class _File:
    """A PEM file and the name it was given by (a setting or a CLI flag),
    so every error says which one to fix."""

    name: str
    path: str

    def read(self) -> bytes:
        try:
            with open(self.path, "rb") as handle:
                return handle.read()
        except OSError as exc:
            raise TlsConfigError(
                f"{self.name} {self.path}: cannot read it ({exc.strerror or exc})"
            ) from None


# One file's identity and version. Replaced files (os.replace, a Kubernetes
# secret's symlink swap) get a new inode; rewritten ones a new size or mtime.
_Stamp = tuple[int, int, int, int] | None


def _stamp(path: str) -> _Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class _KeyPair:
    """A certificate chain and its private key, checked to belong together."""

    certificate: _File
    key: _File

    def load(self) -> tuple[bytes, bytes]:
        """(chain, key) PEM bytes; TlsConfigError when unusable."""
        chain = self.certificate.read()
        key = self.key.read()
        if _CERTIFICATE_MARKER not in chain:
            raise TlsConfigError(
                f"{self.certificate.name} {self.certificate.path}: not a PEM certificate "
                f"(no {_CERTIFICATE_MARKER.decode()} line)"
            )
        if any(marker in key for marker in _ENCRYPTED_KEY_MARKERS):
            raise TlsConfigError(
                f"{self.key.name} {self.key.path}: the key is encrypted; "
                "gRPC needs an unencrypted PEM key"
            )
        if not any(marker in key for marker in _KEY_MARKERS):
            raise TlsConfigError(f"{self.key.name} {self.key.path}: not a PEM private key")
        # The ssl module parses both the way OpenSSL will and checks that the
        # key is the certificate's: a mismatch found here is a clear message,
        # found by gRPC it is a failed handshake with no reason given.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.certificate.path, self.key.path, password=_no_password)
        except ssl.SSLError as exc:
            if "KEY_VALUES_MISMATCH" in str(exc):
                raise TlsConfigError(
                    f"{self.key.name} {self.key.path}: not the private key of the certificate "
                    f"in {self.certificate.name} {self.certificate.path}"
                ) from None
            raise TlsConfigError(
                f"{self.certificate.name} {self.certificate.path} / {self.key.name} "
                f"{self.key.path}: not a usable PEM certificate and key ({exc.reason or exc})"
            ) from None
        except OSError as exc:  # replaced or removed since read(): unreadable now
            raise TlsConfigError(
                f"{self.certificate.name} {self.certificate.path}: cannot read it "
                f"({exc.strerror or exc})"
            ) from None
        return chain, key


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for a
    # passphrase; the markers above catch encrypted keys first, this any other.
    raise TlsConfigError("the private key is encrypted; gRPC needs an unencrypted PEM key")


def _load_authority(file: _File) -> bytes:
    """CA certificate(s) PEM bytes, checked to parse."""
    pem = file.read()
    if _CERTIFICATE_MARKER not in pem:
        raise TlsConfigError(
            f"{file.name} {file.path}: not a PEM CA certificate "
            f"(no {_CERTIFICATE_MARKER.decode()} line)"
        )
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
            cadata=pem.decode("ascii", errors="replace")
        )
    except ssl.SSLError as exc:
        raise TlsConfigError(
            f"{file.name} {file.path}: not a usable PEM CA certificate ({exc.reason or exc})"
        ) from None
    return pem


def _pair(
    cert_name: str, cert_path: str | None, key_name: str, key_path: str | None
) -> _KeyPair | None:
    """None when neither is given; TlsConfigError when only one is."""
    if not cert_path and not key_path:
        return None
    if not key_path:
        raise TlsConfigError(f"{cert_name} is set without {key_name}: set both")
    if not cert_path:
        raise TlsConfigError(f"{key_name} is set without {cert_name}: set both")
    return _KeyPair(_File(cert_name, cert_path), _File(key_name, key_path))


def _file(name: str, path: str | None) -> _File | None:
    # An empty value (`TLS_CERT_FILE=` in a compose file) means unset.
    return _File(name, path) if path else None


# --- server ---------------------------------------------------------------


@dataclass(frozen=True)
class _ServerMaterial:
    """One consistent version of the server's files, read and checked. No
    gRPC object yet: the start-up check runs in the metadata service's
    supervisor, which must fork its workers before any gRPC object exists."""

    stamp: tuple[_Stamp, ...]
    chain: bytes
    key: bytes
    client_roots: bytes | None

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.key, self.chain)], root_certificates=self.client_roots
        )


@dataclass(frozen=True)
class _ServerFiles:
    pair: _KeyPair
    client_authority: _File | None

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> _ServerFiles | None:
        """None: plaintext. TlsConfigError: an incomplete set."""
        pair = _pair("TLS_CERT_FILE", settings.tls_cert_file, "TLS_KEY_FILE", settings.tls_key_file)
        client_authority = _file("TLS_CLIENT_CA_FILE", settings.tls_client_ca_file)
        if pair is None:
            if client_authority is not None:
                raise TlsConfigError(
                    "TLS_CLIENT_CA_FILE is set without TLS_CERT_FILE and TLS_KEY_FILE: "
                    "client certificates are asked for only over TLS"
                )
            return None
        return cls(pair, client_authority)

    def stamp(self) -> tuple[_Stamp, ...]:
        paths = [self.pair.certificate.path, self.pair.key.path]
        if self.client_authority is not None:
            paths.append(self.client_authority.path)
        return tuple(_stamp(path) for path in paths)

    def load(self) -> _ServerMaterial:
        """The files as one consistent version. _FilesChanging: a writer was
        busy with them meanwhile."""
        before = self.stamp()
        try:
            chain, key = self.pair.load()
            client_roots = (
                _load_authority(self.client_authority)
                if self.client_authority is not None
                else None
            )
        except TlsConfigError:
            if self.stamp() != before:  # a half-written file, not a broken one
                raise _FilesChanging from None
            raise
        after = self.stamp()
        if before != after:
            raise _FilesChanging
        return _ServerMaterial(after, chain, key, client_roots)

    def load_at_start(self) -> _ServerMaterial:
        for _ in range(_CONSISTENT_READ_ATTEMPTS):
            try:
                return self.load()
            except _FilesChanging:
                continue
        raise TlsConfigError(
            f"TLS_CERT_FILE {self.pair.certificate.path}: the files kept changing while read"
        )


class _RotatingServerFiles:
    """gRPC's certificate fetcher: called before every TLS handshake, so the
    common case (nothing changed) costs two or three stat calls and returns
    None ("keep serving the current certificate"). A changed set that does
    not load (half-written, key and certificate from different rotations,
    not PEM) is logged once and the previous certificate stays served; it
    is tried again as soon as the files change again."""

    def __init__(self, files: _ServerFiles, served: tuple[_Stamp, ...]) -> None:
        self._files = files
        self._served = served
        self._refused: tuple[_Stamp, ...] | None = None
        # gRPC may handshake on several threads; one of them reloads.
        self._lock = threading.Lock()

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            return self._fetch()
        except Exception:  # an exception here would fail the handshake itself
            _LOGGER.exception("checking the TLS files failed; keeping the current certificate")
            return None

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        stamp = self._files.stamp()
        if stamp in (self._served, self._refused):
            return None
        with self._lock:
            stamp = self._files.stamp()
            if stamp in (self._served, self._refused):
                return None  # another handshake's thread got here first
            try:
                material = self._files.load()
            except _FilesChanging:
                return None  # mid-write: the next handshake looks again
            except TlsConfigError as exc:
                # load() saw these files unchanged throughout: this version
                # is broken, not being written.
                self._refused = stamp
                _LOGGER.warning(
                    "TLS files changed but cannot be used; still serving the previous "
                    "certificate: %s",
                    exc,
                )
                return None
            self._served = material.stamp
            self._refused = None
            _LOGGER.info(
                "TLS certificate reloaded; new connections get it",
                extra={"cert_file": self._files.pair.certificate.path},
            )
            return material.configuration()


def startup_refusal(settings: ServiceSettings) -> str | None:
    """One line saying why the server's TLS files cannot be used (an
    incomplete set, a missing, unreadable or non-PEM file, a key that is
    not the certificate's), or None. Call before anything slow starts."""
    try:
        files = _ServerFiles.from_settings(settings)
        if files is not None:
            files.load_at_start()
    except TlsConfigError as exc:
        return str(exc)
    return None


def server_credentials(settings: ServiceSettings) -> grpc.ServerCredentials | None:
    """None: plaintext (no TLS_CERT_FILE / TLS_KEY_FILE). Otherwise
    credentials that follow the files as they are rotated; TlsConfigError
    when they cannot be used now."""
    files = _ServerFiles.from_settings(settings)
    if files is None:
        return None
    material = files.load_at_start()
    return grpc.dynamic_ssl_server_credentials(
        material.configuration(),
        _RotatingServerFiles(files, material.stamp),
        require_client_authentication=files.client_authority is not None,
    )


# --- clients --------------------------------------------------------------


def client_refusal(
    ca_file: str | None,
    cert_file: str | None = None,
    key_file: str | None = None,
    *,
    names: tuple[str, str, str] = ("CA file", "client certificate file", "client key file"),
) -> str | None:
    """One line saying why a client's TLS files cannot be used, or None;
    `names` are the settings or flags they came from. Makes no gRPC object
    (safe before the metadata service forks its workers)."""
    try:
        _client_material(ca_file, cert_file, key_file, names)
    except TlsConfigError as exc:
        return str(exc)
    return None


def channel_credentials(
    ca_file: str | None,
    cert_file: str | None = None,
    key_file: str | None = None,
    *,
    names: tuple[str, str, str] = ("CA file", "client certificate file", "client key file"),
) -> grpc.ChannelCredentials | None:
    """None: plaintext (no CA file, no client certificate). A CA file: TLS,
    trusting only that CA. A certificate and key as well: mTLS. A client
    certificate without a CA file: mTLS trusting gRPC's bundled public
    roots. TlsConfigError: an incomplete or unusable set.

    Read once, when the channel is made: the CLI and the health probe live
    for one call, and gRPC Python has no reloading client credentials (a
    rotated client certificate reaches a long-lived channel when it is made
    again)."""
    material = _client_material(ca_file, cert_file, key_file, names)
    if material is None:
        return None
    roots, key, chain = material
    return grpc.ssl_channel_credentials(
        root_certificates=roots, private_key=key, certificate_chain=chain
    )


def _client_material(
    ca_file: str | None, cert_file: str | None, key_file: str | None, names: tuple[str, str, str]
) -> tuple[bytes | None, bytes | None, bytes | None] | None:
    """(CA roots, key, chain) PEM bytes, None where not given; None: plaintext."""
    ca_name, cert_name, key_name = names
    authority = _file(ca_name, ca_file)
    pair = _pair(cert_name, cert_file, key_name, key_file)
    if authority is None and pair is None:
        return None
    roots = _load_authority(authority) if authority is not None else None
    if pair is None:
        return roots, None, None
    chain, key = pair.load()
    return roots, key, chain
