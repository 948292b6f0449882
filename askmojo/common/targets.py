"""Where a client finds a service's replicas, and how it spreads its calls.

Shared by every client the project ships (the SDK and through it the CLI and
the LangChain integration, the health probe, the metadata service's client of
the vector service), so `METADATA_ADDRESS` and `VECTOR_SERVICE_ADDRESS` mean
the same everywhere: one HOST:PORT, several comma-separated ones, or any gRPC
target (`dns:///vector:50052`). Several backends are balanced by gRPC itself
(`round_robin`) and, with a health service name, only those reporting
SERVING get calls (gRPC client-side health checking, built into the core:
the service config's `healthCheckConfig` is all it takes). Idempotent calls
are retried by gRPC's retry policy, on another replica when one has died.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

METADATA_SERVICE = "askmojo.metadata.v1.MetadataService"
VECTOR_SERVICE = "askmojo.vector.v1.VectorService"
EMBEDDING_SERVICE = "askmojo.vector.v1.EmbeddingService"

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
# replay; IngestDocuments's per-batch answers are the caller's to act on, and
# the metadata service resends an UpsertStream's unanswered batches itself).
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


def service_config(
    retry: RetryPolicy,
    services: Sequence[str],
    balanced: bool,
    health_service: str | None = None,
) -> str:
    """The channel's service config JSON: round_robin over the backends when
    `balanced`, skipping those whose `health_service` is not SERVING (when
    given), and the retry policy on the idempotent methods of `services`."""
    config: dict[str, Any] = {}
    if balanced:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
        if health_service is not None:
            # A backend without the health service (UNIMPLEMENTED) counts
            # as healthy; one answering NOT_SERVING gets no calls until it
            # is SERVING again.
            config["healthCheckConfig"] = {"serviceName": health_service}
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

# (gRPC target, authority to present or None, several backends?)
Target: TypeAlias = tuple[str, str | None, bool]


def is_grpc_target(address: str) -> bool:
    """A target gRPC resolves itself (`dns:///...`, `ipv4:...`, `unix:...`)."""
    address = address.strip()
    return address.startswith(_SCHEMES) or "://" in address


def check_address(address: str) -> None:
    """ValueError (one line, what is wrong and what is expected) unless
    `address` is one HOST:PORT, comma-separated HOST:PORTs or a gRPC target.
    Syntax only: nothing is looked up, so a setting can be checked before
    the hosts it names exist (containers starting together)."""
    address = address.strip()
    if not address:
        raise ValueError("is empty (expected HOST:PORT, HOST:PORT,HOST:PORT or a gRPC target)")
    if is_grpc_target(address):
        scheme, _, rest = address.partition(":")
        if not rest.strip("/"):
            raise ValueError(f"{address!r}: the {scheme}: target names nothing")
        return
    parts = address.split(",")
    families = set()
    for index, part in enumerate(parts, 1):
        if not part.strip():
            raise ValueError(
                f"{address!r}: entry {index} of {len(parts)} is empty "
                "(expected HOST:PORT,HOST:PORT)"
            )
        host, _ = _split(part.strip())
        if _is_ip(host):
            families.add(ipaddress.ip_address(host).version)
    if len(families) > 1:
        raise ValueError(f"{address!r} mixes IPv4 and IPv6 addresses; use one family")


def replica_addresses(address: str) -> list[str]:
    """The entries of a comma-separated list, or [address] for one HOST:PORT
    or a gRPC target; ValueError as `check_address`."""
    check_address(address)
    address = address.strip()
    if is_grpc_target(address):
        return [address]
    return [part.strip() for part in address.split(",")]


def looks_up_names(address: str) -> bool:
    """Whether `resolve_target` looks host names up itself (a list with a
    host name in it), so that a long-lived client should look them up again
    when its backends fail (their addresses may have changed)."""
    parts = replica_addresses(address)
    return (
        not is_grpc_target(address)
        and len(parts) > 1
        and any(not _is_ip(_split(part)[0]) for part in parts)
    )


def resolve_target(address: str, unresolved: list[str] | None = None) -> Target:
    """(gRPC target, authority to present or None, several backends?).

    One HOST:PORT, or any gRPC target (`dns:///vector:50052`, `ipv4:...`,
    `unix:...`), passes through. Several comma-separated HOST:PORTs become one
    `ipv4:`/`ipv6:` target over all of them (host names are looked up once,
    here; for names whose addresses change, give a `dns:///` target instead),
    with the first host name (else the first address) as the authority, so
    TLS checks the name you wrote: every replica's certificate must carry
    it. ValueError for anything else (`check_address`) or a host name that
    does not resolve; with `unresolved`, such entries are added to it and
    left out instead, unless none of the entries resolves."""
    parts = replica_addresses(address)
    address = address.strip()
    if is_grpc_target(address):
        return address, None, address.startswith(("dns:", "xds:")) or "," in address
    if len(parts) == 1:
        return parts[0], None, False
    v4: list[str] = []
    v6: list[str] = []
    # gRPC's own authority for an ipv4:/ipv6: list passes no TLS hostname
    # check: the first host name written (else the first address) is checked.
    named = [part for part in parts if not _is_ip(_split(part)[0])]
    authority = (named or parts)[0]
    for part in parts:
        host, port = _split(part)
        if _is_ip(host):
            ip = ipaddress.ip_address(host)
            (v6 if ip.version == 6 else v4).append(_join(str(ip), port, ip.version))
            continue
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            if unresolved is None:
                raise ValueError(f"{part!r}: cannot resolve {host!r} ({exc})") from None
            unresolved.append(part)
            continue
        for family, _, _, _, sockaddr in found:
            if family == socket.AF_INET6:
                v6.append(_join(str(sockaddr[0]), port, 6))
            elif family == socket.AF_INET:
                v4.append(_join(str(sockaddr[0]), port, 4))
    # One target is one scheme: a name with both kinds of address follows
    # the literal addresses given beside it, else IPv4.
    literal_v6 = any(_is_ip(h) and ":" in h for h, _ in map(_split, parts))
    use_v6 = bool(v6) and (literal_v6 or not v4)
    addresses = list(dict.fromkeys(v6 if use_v6 else v4))
    if not addresses:
        raise ValueError(f"{address!r}: none of its host names resolves")
    scheme = "ipv6" if use_v6 else "ipv4"
    return f"{scheme}:{','.join(addresses)}", authority, True


def target_options(
    target: Target,
    retry: RetryPolicy,
    services: Sequence[str],
    *,
    balanced: bool | None = None,
    health_service: str | None = None,
) -> list[tuple[str, Any]]:
    """Channel options for `target`: retries on, the service config, and the
    authority TLS should check. `balanced` overrides the target's own
    (round_robin even over one name, which may resolve to several
    backends); `health_service` defaults to the first of `services`."""
    _, authority, several = target
    balanced = several if balanced is None else balanced
    health = health_service if health_service is not None else (services[0] if services else None)
    options: list[tuple[str, Any]] = [
        ("grpc.enable_retries", 1 if retry.max_attempts > 1 else 0),
        ("grpc.service_config", service_config(retry, services, balanced, health)),
    ]
    if authority is not None:
        options.append(("grpc.default_authority", authority))
    return options


def _split(part: str) -> tuple[str, int]:
    host, sep, port = part.rpartition(":")
    host = host.strip()
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{part!r}: expected HOST:PORT")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError(f"{part!r}: unbalanced brackets around an IPv6 address")
    number = int(port)
    if not 1 <= number <= 65535:
        raise ValueError(f"{part!r}: port {number} is not between 1 and 65535")
    return host.strip("[]"), number


def _join(host: str, port: int, version: int) -> str:
    return f"[{host}]:{port}" if version == 6 else f"{host}:{port}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
