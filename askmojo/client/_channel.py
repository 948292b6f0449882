"""Targets, retry policy and channel options shared by every client."""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

from pydantic import SecretStr

from askmojo.common.channels import ClientSecurity
from askmojo.common.targets import (
    DEFAULT_RETRY,
    EMBEDDING_SERVICE,
    IDEMPOTENT_METHODS,
    METADATA_SERVICE,
    NO_RETRIES,
    VECTOR_SERVICE,
    RetryPolicy,
    Target,
    resolve_target,
    service_config,
    target_options,
)

__all__ = [
    "DEFAULT_RETRY",
    "EMBEDDING_SERVICE",
    "IDEMPOTENT_METHODS",
    "METADATA_SERVICE",
    "NO_RETRIES",
    "VECTOR_SERVICE",
    "RetryPolicy",
    "Target",
    "resolve_target",
    "service_config",
]

DEFAULT_METADATA_ADDRESS = "localhost:50051"
DEFAULT_VECTOR_ADDRESS = "localhost:50052"
#: Seconds a unary call may take unless the client or the call says otherwise.
DEFAULT_TIMEOUT = 30.0
# Search hits carry chunk texts and batches carry documents: room for both
# (the services' MAX_MESSAGE_BYTES defaults to 64 MiB).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def channel_options(
    target: Target,
    retry: RetryPolicy,
    services: Sequence[str],
    extra: Sequence[tuple[str, Any]] = (),
) -> list[tuple[str, Any]]:
    """Message sizes, service config (balancing over the healthy backends of
    `services[0]`, retries) and any extra."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        *target_options(target, retry, services),
    ]
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
