"""Tracing is off unless the standard OTEL_* variables ask for it, and then
nothing sits on the call path: no provider, no interceptor."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from opentelemetry import trace

from askmojo.common import tracing


@pytest.fixture
def no_otel(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    # configure() decides for the whole process: a fresh state per test.
    monkeypatch.setattr(tracing, "_state", tracing._State())
    yield monkeypatch


@pytest.mark.parametrize(
    ("environ", "exporters"),
    [
        ({}, ()),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, ()),
        ({"OTEL_TRACES_EXPORTER": "none"}, ()),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": " OTLP , console,otlp"}, ("otlp", "console")),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, ()),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, ()),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_TRACES_EXPORTER": "none"}, ()),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_SDK_DISABLED": "true"}, ()),
        ({"OTEL_TRACES_EXPORTER": "otlp,console", "OTEL_SDK_DISABLED": "TRUE"}, ()),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "false"}, ("console",)),
    ],
)
def test_requested_exporters(environ: dict[str, str], exporters: tuple[str, ...]) -> None:
    assert tracing.requested_exporters(environ) == exporters


def test_without_otel_variables_nothing_is_installed(no_otel: pytest.MonkeyPatch) -> None:
    tracing.configure("askmojo-metadata")
    assert not tracing.enabled()
    assert tracing.server_interceptors() == []
    assert tracing.client_interceptors() == []
    # No provider was set: the API's proxy answers (a no-op until one is).
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def test_sdk_disabled_wins(no_otel: pytest.MonkeyPatch) -> None:
    no_otel.setenv("OTEL_TRACES_EXPORTER", "otlp")
    no_otel.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    no_otel.setenv("OTEL_SDK_DISABLED", "true")
    tracing.configure("askmojo-vector")
    assert tracing.server_interceptors() == []
    assert tracing.client_interceptors() == []
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def test_configure_builds_no_provider_before_the_serving_process_asks(
    no_otel: pytest.MonkeyPatch,
) -> None:
    """The metadata supervisor configures, then forks: it must hold no gRPC
    object (the OTLP exporter's channel) when it does."""
    no_otel.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    tracing.configure("askmojo-metadata")
    assert tracing.enabled()
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
