"""Prometheus metrics (DESIGN.md §9): the /metrics endpoint and the RPC metrics.

STUB (issue #12 skeleton): filled in by the metrics work.
"""

from __future__ import annotations

from typing import Any


class MetricsEndpoint:
    """The HTTP server behind /metrics. `multiprocess`: several worker
    processes record into one directory and one scrape sums them."""

    @classmethod
    def start(cls, host: str, port: int, *, multiprocess: bool = False) -> MetricsEndpoint | None:
        """None when port is 0 (metrics off)."""
        return None

    def worker_exited(self, pid: int) -> None:
        """A worker process is gone: its live gauges must stop counting."""

    def stop(self) -> None:
        pass


def server_interceptors(service: str) -> list[Any]:
    """RPCs by method and status code, latency, in flight."""
    return []
