"""What every server of the pair does the same way: the interceptors around
each call and the port it listens on (plaintext or TLS)."""

from __future__ import annotations

from typing import Any

import grpc

from askmojo.common import auth, metrics, tls, tracing
from askmojo.common.rpc import RequestGuard
from askmojo.common.settings import ServiceSettings


def server_interceptors(settings: ServiceSettings, service: str) -> list[Any]:
    """Outermost first: the trace spans the whole call (so its logs carry the
    trace id), metrics count every outcome (refusals included), keys are
    checked before a request is decoded, and the guard refuses undecodable or
    too-wide requests with INVALID_ARGUMENT on every method."""
    return [
        *tracing.server_interceptors(),
        *metrics.server_interceptors(service),
        *auth.server_interceptors(settings),
        RequestGuard(settings.filter_limits),
    ]


def listen(server: grpc.aio.Server, host: str, port: int, settings: ServiceSettings) -> int:
    """Binds host:port (0 picks a free port), with TLS when TLS_CERT_FILE is
    set (rotated files reach new connections without a restart); returns
    the port. tls.TlsConfigError: the TLS files cannot be used."""
    address = f"{host}:{port}"
    credentials = tls.server_credentials(settings)
    if credentials is None:
        bound: int = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, credentials)
    if bound == 0:
        raise RuntimeError(f"could not listen on {address}")
    return bound
