"""API keys (DESIGN.md §9): who may call which method.

STUB (issue #12 skeleton): the interceptor and client side are filled in by
the auth work; the names below are the composition points other modules use.
"""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from askmojo.common.settings import ServiceSettings


def startup_refusal(settings: ServiceSettings) -> str | None:
    """One line saying why this service must not start (production without
    API_KEY and without ALLOW_UNAUTHENTICATED=true), or None."""
    return None


def server_interceptors(settings: ServiceSettings) -> list[Any]:
    """grpc.aio server interceptors enforcing API_KEY / READ_ONLY_API_KEY."""
    return []


def client_interceptors(api_key: SecretStr | None) -> list[Any]:
    """grpc.aio client interceptors sending `authorization: Bearer <key>`."""
    return []


def sync_client_interceptors(api_key: SecretStr | None) -> list[Any]:
    """The same for a blocking channel (grpc.intercept_channel)."""
    return []
