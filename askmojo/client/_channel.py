"""Targets, retry policy and channel options shared by every client."""

from __future__ import annotations

import enum
import ipaddress
import json
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from pydantic import SecretStr

from askmojo.common.channels import ClientSecurity

METADATA_SERVICE = "askmojo.metadata.v1.MetadataService"
VECTOR_SERVICE = "askmojo.vector.v1.VectorService"
EMBEDDING_SERVICE = "askmojo.vector.v1.EmbeddingService"

DEFAULT_METADATA_ADDRESS = "localhost:50051"
DEFAULT_VECTOR_ADDRESS = "localhost:50052"
#: Seconds a unary call may take unless the client or the call says otherwise.
DEFAULT_TIMEOUT = 30.0
# Search hits carry chunk texts and batches carry documents: room for both
# (the services' MAX_MESSAGE_BYTES defaults to 64 MiB).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# Retried on UNAVAILABLE / RESOURCE_EXHAUSTED by gRPC itself (service config),
# only where sending the call twice does no harm:
# - reads, searches, stats, embeddings: no effect at all;
# - UpsertDocuments / vector Upsert: keyed by the client's ids, and a resent
#   unchanged document is reported UNCHANGED, so a second attempt converges;
# - DeleteDocuments / vector Delete: deleting what is gone deletes nothing
#   (by filter: a second pass deletes what the first left);
# - Reconcile: it repairs towards the database, so twice is once;
# - EnsureCollection / DropCollection: "make it so" calls (their created /
#   dropped flag may then read False).
# Not retried: CreateCollection and DeleteCollection (a retry after a first
# attempt that did its work would answer ALREADY_EXISTS / NOT_FOUND for it)
# and the bidirectional streams (gRPC would buffer every message sent for a
# replay; IngestDocuments's per-batch answers are the caller's to act on).
IDEMPOTENT_METHODS: Mapping[str, tuple[str, ...]] = {
    METADATA_SERVICE: (
        "GetCollection",
        "ListCollections",
        "UpsertDocuments",
        "GetDocument",
        "ListDocuments",
        "DeleteDocuments",
        "Search",
        "Reconcile",
        "GetStats",
    ),
    VECTOR_SERVICE: (
        "EnsureCollection",
        "DropCollection",
        "Upsert",
        "Query",
        "Get",
        "Delete",
        "Count",
        "ListIds",
    ),
    EMBEDDING_SERVICE: ("Embed", "GetModelInfo"),
}


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC's retry policy for the idempotent methods: `max_attempts`
    attempts in all (gRPC caps it at 5), waits drawn at random up to
    `initial_backoff` * `multiplier`^n seconds, at most `max_backoff`. The
    call's deadline bounds all attempts together."""

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0
    codes: tuple[str, ...] = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")


#: The policy clients use unless told otherwise.
DEFAULT_RETRY = RetryPolicy()
#: No retries at all.
NO_RETRIES = RetryPolicy(max_attempts=1)


def service_config(retry: RetryPolicy, services: Sequence[str], balanced: bool) -> str:
    """The channel's service config JSON: round_robin over the addresses
    when several, and the retry policy on the idempotent methods."""
    config: dict[str, Any] = {}
    if balanced:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
    if retry.max_attempts > 1:
        names = [
            {"service": service, "method": method}
            for service in services
            for method in IDEMPOTENT_METHODS[service]
        ]
        config["methodConfig"] = [
            {
                "name": names,
                "retryPolicy": {
                    "maxAttempts": retry.max_attempts,
                    "initialBackoff": f"{retry.initial_backoff}s",
                    "maxBackoff": f"{retry.max_backoff}s",
                    "backoffMultiplier": retry.multiplier,
                    "retryableStatusCodes": list(retry.codes),
                },
            }
        ]
    return json.dumps(config)


_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:")

Target: TypeAlias = tuple[str, str | None, bool]


def resolve_target(address: str) -> Target:
    """(gRPC target, authority to present or None, several backends?).

    One HOST:PORT, or any gRPC target (`dns:///vector:50052`, `ipv4:...`,
    `unix:...`), passes through. Several comma-separated HOST:PORTs become one
    `ipv4:`/`ipv6:` target over all of them (host names are looked up once,
    here; for names that change, give a `dns:///` target instead), with the
    first host's name as the authority so TLS checks the name you wrote."""
    address = address.strip()
    if not address:
        raise ValueError("empty address (expected HOST:PORT)")
    if address.startswith(_SCHEMES) or "://" in address:
        return address, None, address.startswith(("dns:", "xds:")) or "," in address
    parts = [p.strip() for p in address.split(",") if p.strip()]
    if len(parts) == 1:
        return parts[0], None, False
    v4: list[str] = []
    v6: list[str] = []
    authority = None
    for part in parts:
        host, port = _split(part)
        authority = authority or (part if not _is_ip(host) else None)
        try:
            ip = ipaddress.ip_address(host)
            (v6 if ip.version == 6 else v4).append(_join(str(ip), port, ip.version))
            continue
        except ValueError:
            pass
        for family, _, _, _, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            if family == socket.AF_INET6:
                v6.append(_join(str(sockaddr[0]), port, 6))
            elif family == socket.AF_INET:
                v4.append(_join(str(sockaddr[0]), port, 4))
    if v4 and v6:
        # One target is one scheme: prefer IPv4 when both are reachable.
        if all(_is_ip(_split(p)[0]) for p in parts):
            raise ValueError(f"{address!r} mixes IPv4 and IPv6 addresses; use one family")
        v6 = []
    addresses = list(dict.fromkeys(v4 or v6))
    scheme = "ipv4" if v4 else "ipv6"
    return f"{scheme}:{','.join(addresses)}", authority, True


def _split(part: str) -> tuple[str, int]:
    host, sep, port = part.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"{part!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def _join(host: str, port: int, version: int) -> str:
    return f"[{host}]:{port}" if version == 6 else f"{host}:{port}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def channel_options(
    target: Target,
    retry: RetryPolicy,
    services: Sequence[str],
    extra: Sequence[tuple[str, Any]] = (),
) -> list[tuple[str, Any]]:
    """Message sizes, service config (balancing, retries) and any extra."""
    _, authority, balanced = target
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.enable_retries", 1 if retry.max_attempts > 1 else 0),
        ("grpc.service_config", service_config(retry, services, balanced)),
    ]
    if authority is not None:
        options.append(("grpc.default_authority", authority))
    given = {name for name, _ in extra}
    return [o for o in options if o[0] not in given] + list(extra)


def security(
    api_key: str | None,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    environ: Mapping[str, str] = os.environ,
) -> ClientSecurity:
    """The key (ASKMOJO_API_KEY when not given; "" for none) and TLS files."""
    key = environ.get("ASKMOJO_API_KEY") if api_key is None else api_key
    return ClientSecurity(
        api_key=SecretStr(key) if key else None,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
    )


def metadata_address(address: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The address given, else ASKMOJO_ADDRESS, else METADATA_ADDRESS, else
    localhost:50051."""
    return (
        address
        or environ.get("ASKMOJO_ADDRESS")
        or environ.get("METADATA_ADDRESS")
        or DEFAULT_METADATA_ADDRESS
    )


def vector_address(address: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The address given, else ASKMOJO_VECTOR_ADDRESS, else
    VECTOR_SERVICE_ADDRESS, else localhost:50052."""
    return (
        address
        or environ.get("ASKMOJO_VECTOR_ADDRESS")
        or environ.get("VECTOR_SERVICE_ADDRESS")
        or DEFAULT_VECTOR_ADDRESS
    )


class Default(enum.Enum):
    """`timeout=DEFAULT`: the client's default timeout (None means none)."""

    DEFAULT = "default"


DEFAULT = Default.DEFAULT
#: A call's `timeout=`: seconds, None for no deadline, or DEFAULT.
Timeout: TypeAlias = float | Default | None


def pick_timeout(timeout: Timeout, default: float | None) -> float | None:
    return default if timeout is Default.DEFAULT else timeout
