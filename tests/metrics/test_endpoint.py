"""The endpoint's life: off at port 0 (no interceptor, nothing recorded),
served over HTTP while on, and multiprocess mode refusing to start once a
value exists that its scrape could never see."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import grpc

from askmojo.common import metrics
from askmojo.common.metrics import MetricsEndpoint, server_interceptors
from tests.metrics.scrape import scrape


def test_port_zero_means_off() -> None:
    assert MetricsEndpoint.start("127.0.0.1", 0) is None
    assert not metrics.enabled()
    assert server_interceptors("metadata") == []


def test_an_endpoint_turns_recording_on_until_it_stops() -> None:
    endpoint = MetricsEndpoint.listen("127.0.0.1", 0)
    try:
        assert metrics.enabled()
        assert len(server_interceptors("metadata")) == 1
        scraped = scrape(endpoint.port)
        assert scraped.value("askmojo_worker_restarts_total") == 0
        assert not [n for n in scraped.names if n.endswith("_created")]
    finally:
        endpoint.stop()
    assert not metrics.enabled()
    assert server_interceptors("metadata") == []


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_multiprocess_mode_refuses_values_made_before_it() -> None:
    result = run_python(
        """
        from askmojo.common.metrics import RPC_HANDLED, MetricsEndpoint
        RPC_HANDLED.labels("svc", "Method", "OK").inc()
        MetricsEndpoint.listen("127.0.0.1", 0, multiprocess=True)
        """
    )
    assert result.returncode != 0
    assert "RuntimeError: metric values were created before multiprocess" in result.stderr
    assert "askmojo_rpc_handled" in result.stderr


def test_multiprocess_directory_is_fresh_and_removed() -> None:
    result = run_python(
        """
        import os
        from askmojo.common.metrics import RPC_HANDLED, MetricsEndpoint
        endpoint = MetricsEndpoint.listen("127.0.0.1", 0, multiprocess=True)
        directory = endpoint.directory
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == directory
        RPC_HANDLED.labels("svc", "Method", "OK").inc()
        assert os.listdir(directory), "values live in files"
        endpoint.stop()
        assert not os.path.exists(directory)
        assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


class _Details(grpc.HandlerCallDetails):  # type: ignore[misc]
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def test_made_up_method_names_never_become_labels() -> None:
    """An inner interceptor (a key check) may answer a method the server
    does not have before anyone looks it up; its caller-chosen name must
    not become a label (nor a cache entry)."""
    import askmojo.metadata.v1.metadata_service_pb2  # noqa: F401  (the descriptor)

    async def refuse(request: object, context: object) -> None:
        return None

    handler = grpc.unary_unary_rpc_method_handler(refuse)

    async def continuation(_: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return handler

    interceptor = metrics.RpcMetrics("metadata")
    search = "/askmojo.metadata.v1.MetadataService/Search"
    for method in (search, "/made.Up/Name", "/askmojo.metadata.v1.MetadataService/Nope"):
        wrapped = asyncio.run(interceptor.intercept_service(continuation, _Details(method)))
        assert wrapped is not handler
    again = asyncio.run(interceptor.intercept_service(continuation, _Details(search)))
    assert again is asyncio.run(interceptor.intercept_service(continuation, _Details(search)))
    # A key check alternating the method's handler with its refusal: both
    # stay wrapped once (no re-wrapping per call).
    refusal = grpc.unary_unary_rpc_method_handler(refuse)

    async def refusing(_: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return refusal

    refused = asyncio.run(interceptor.intercept_service(refusing, _Details(search)))
    assert asyncio.run(interceptor.intercept_service(continuation, _Details(search))) is again
    assert asyncio.run(interceptor.intercept_service(refusing, _Details(search))) is refused
    labelled = {
        (s.labels["grpc_service"], s.labels["grpc_method"])
        for family in metrics.RPC_HANDLED.collect()
        for s in family.samples
    }
    assert ("askmojo.metadata.v1.MetadataService", "Search") in labelled
    assert ("unknown", "unknown") in labelled
    assert not [pair for pair in labelled if "Up" in pair[0] or pair[1] in ("Name", "Nope")]


def test_a_dead_workers_gauges_are_gone_before_its_restart_is_counted() -> None:
    result = run_python(
        """
        import os
        from askmojo.common.metrics import RPC_IN_FLIGHT, WORKER_RESTARTS, MetricsEndpoint
        endpoint = MetricsEndpoint.listen("127.0.0.1", 0, multiprocess=True)
        RPC_IN_FLIGHT.labels("svc", "Method").inc()  # as a worker would (this pid's file)
        dead = os.path.join(endpoint.directory, f"gauge_livesum_{os.getpid()}.db")
        assert os.path.exists(dead)
        counter = WORKER_RESTARTS()
        counted = counter.inc
        def inc(*args):
            assert not os.path.exists(dead), "restart counted while the gauges still count"
            counted(*args)
        counter.inc = inc
        endpoint.worker_exited(os.getpid())
        endpoint.stop()
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
