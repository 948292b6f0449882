"""OpenTelemetry traces across both services (DESIGN.md §9), off by default.

STUB (issue #12 skeleton): filled in by the tracing work.
"""

from __future__ import annotations

from typing import Any


def configure(service_name: str) -> None:
    """Sets up the tracer provider from the standard OTEL_* variables (once
    per process); does nothing unless tracing is asked for."""


def server_interceptors() -> list[Any]:
    return []


def client_interceptors() -> list[Any]:
    return []
