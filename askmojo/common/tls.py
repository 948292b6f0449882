"""TLS and mTLS from PEM files (DESIGN.md §9), re-read when they change.

STUB (issue #12 skeleton): filled in by the TLS work.
"""

from __future__ import annotations

import grpc

from askmojo.common.settings import ServiceSettings


def server_credentials(settings: ServiceSettings) -> grpc.ServerCredentials | None:
    """None: plaintext (no TLS_CERT_FILE)."""
    return None


def channel_credentials(
    ca_file: str | None, cert_file: str | None = None, key_file: str | None = None
) -> grpc.ChannelCredentials | None:
    """None: plaintext (no CA file given)."""
    return None
