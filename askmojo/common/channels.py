"""Client channels of the pair's own clients (the metadata service's client
of the vector service, the CLI, the health probe): key, TLS and traces in
one place, so every client speaks to a secured service the same way."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from pydantic import SecretStr

from askmojo.common import auth, tls, tracing


@dataclass(frozen=True)
class ClientSecurity:
    """How a client proves itself: an API key, the CA to trust for the
    server's certificate (TLS), its own certificate and key (mTLS)."""

    api_key: SecretStr | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


# Plaintext, no key: a development pair on one machine.
NO_SECURITY = ClientSecurity()


def open_aio_channel(
    target: str,
    security: ClientSecurity = NO_SECURITY,
    options: Sequence[tuple[str, object]] = (),
) -> grpc.aio.Channel:
    """Call inside the event loop that will use it. Every call, unary and
    streaming, carries the key (auth.with_api_key says why not an interceptor)."""
    interceptors = tracing.client_interceptors()
    credentials = tls.channel_credentials(security.ca_file, security.cert_file, security.key_file)
    if credentials is None:
        channel = grpc.aio.insecure_channel(
            target, options=options, interceptors=interceptors or None
        )
    else:
        channel = grpc.aio.secure_channel(
            target, credentials, options=options, interceptors=interceptors or None
        )
    return auth.with_api_key(channel, security.api_key)


def open_channel(
    target: str,
    security: ClientSecurity = NO_SECURITY,
    options: Sequence[tuple[str, object]] = (),
) -> grpc.Channel:
    """A blocking channel (the CLI, the health probe)."""
    credentials = tls.channel_credentials(security.ca_file, security.cert_file, security.key_file)
    if credentials is None:
        channel = grpc.insecure_channel(target, options=options)
    else:
        channel = grpc.secure_channel(target, credentials, options=options)
    interceptors = auth.sync_client_interceptors(security.api_key)
    return grpc.intercept_channel(channel, *interceptors) if interceptors else channel
