"""Prometheus metrics (DESIGN.md §9): the /metrics endpoint, the metric
factories every module uses, and the RPC metrics.

One process (the vector service, a single metadata worker): values live in
memory and the endpoint serves prometheus_client's default registry.

Several processes (the metadata service with WORKERS > 1): the supervisor
starts the endpoint with `multiprocess=True` before it forks. That makes a
fresh directory for this run, points PROMETHEUS_MULTIPROC_DIR at it and
switches prometheus_client to its file-backed values (the library picks its
value class from the environment when `prometheus_client.values` is
imported, far too early for a directory made per run; the forked workers
inherit the switch). Every value created afterwards, in the supervisor or a
worker, lives in a file per process, and one scrape of the supervisor's
endpoint merges them: counters and histograms summed (a dead worker's counts
stay, so totals never go backwards), gauges as their `multiprocess_mode`
says. A worker that dies has its live gauges dropped (`worker_exited`). The
directory is removed when the endpoint stops.

Hence the one rule for metric families: none may create a value before the
endpoint starts. Families with labels create values only at `.labels()`;
one without labels creates its value when constructed, so those of the
metadata service are built on first use (`Lazy`). `MetricsEndpoint.start`
checks the rule.

Recording is on only while an endpoint runs in the process (or in the
supervisor that forked it): with METADATA_METRICS_PORT / VECTOR_METRICS_PORT
at 0 the RPC interceptor is not installed and the other hooks return at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Generic, Literal, TypeVar

import grpc
from google.protobuf import descriptor_pool
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
    values,
)
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from askmojo.common.rpc import rewrapped_handler

_LOGGER = logging.getLogger(__name__)

PREFIX = "askmojo_"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Seconds, from a fast unary read to a long ingest stream.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
GaugeMode = Literal["livesum", "liveall", "livemax", "livemin", "livemostrecent", "sum", "max"]


class _Recording:
    """How many endpoints run in this process (or ran in the supervisor that
    forked it): recording is on while there is one."""

    endpoints = 0


# No `_created` series: they double what a scrape carries and no query here
# needs them.
disable_created_metrics()  # type: ignore[no-untyped-call]
_families: list[MetricWrapperBase] = []
_families_lock = threading.Lock()


def enabled() -> bool:
    """Whether metrics are recorded in this process."""
    return _Recording.endpoints > 0


# --- families ----------------------------------------------------------------


def _register(family: MetricWrapperBase) -> None:
    with _families_lock:
        _families.append(family)


def _check_name(name: str) -> None:
    if not name.startswith(PREFIX):
        raise ValueError(f"metric {name!r} must start with {PREFIX!r}")


def counter(name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
    """A counter in the default registry (`name` without `_total`)."""
    _check_name(name)
    family = Counter(name, documentation, labels)
    _register(family)
    return family


def gauge(name: str, documentation: str, labels: Sequence[str] = (), *, mode: GaugeMode) -> Gauge:
    """A gauge; `mode` says how the values of several processes combine
    (ignored with one process): "livesum" for amounts each worker holds,
    "livemostrecent" for one value any worker may measure."""
    _check_name(name)
    family = Gauge(name, documentation, labels, multiprocess_mode=mode)
    _register(family)
    return family


def histogram(
    name: str, documentation: str, labels: Sequence[str] = (), *, buckets: Sequence[float]
) -> Histogram:
    _check_name(name)
    family = Histogram(name, documentation, labels, buckets=buckets)
    _register(family)
    return family


M = TypeVar("M", bound=MetricWrapperBase)


class Lazy(Generic[M]):
    """A family built on first use: for families without labels, whose value
    would otherwise be created at import, before multiprocess mode is on."""

    def __init__(self, make: Callable[[], M]) -> None:
        self._make = make
        self._family: M | None = None
        self._lock = threading.Lock()

    def __call__(self) -> M:
        family = self._family
        if family is None:
            with self._lock:
                if self._family is None:
                    self._family = self._make()
                family = self._family
        return family


def _recorded_families() -> list[str]:
    """Our families that hold a value already."""
    with _families_lock:
        families = list(_families)
    return [metric.name for family in families for metric in family.collect() if metric.samples]


# --- the endpoint ----------------------------------------------------------------


class MetricsEndpoint:
    """The HTTP server behind /metrics. `multiprocess`: several worker
    processes record into one directory and one scrape sums them."""

    def __init__(
        self,
        httpd: Any,
        thread: threading.Thread,
        registry: CollectorRegistry,
        directory: str | None,
    ) -> None:
        self._httpd = httpd
        self._thread = thread
        self.registry = registry
        self.directory = directory
        self._collectors: list[Collector] = []
        self._owner = os.getpid()
        self._stopped = False

    @classmethod
    def start(cls, host: str, port: int, *, multiprocess: bool = False) -> MetricsEndpoint | None:
        """None when port is 0 (metrics off)."""
        if port == 0:
            return None
        return cls.listen(host, port, multiprocess=multiprocess)

    @classmethod
    def listen(cls, host: str, port: int, *, multiprocess: bool = False) -> MetricsEndpoint:
        """Serves /metrics on host:port (0: a free port, see `.port`)."""
        directory = _enable_multiprocess() if multiprocess else None
        if directory is not None:
            registry = CollectorRegistry()
            prometheus_multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        else:
            registry = REGISTRY
        try:
            address = host.strip("[]") or "::"
            httpd, thread = start_http_server(port, addr=address, registry=registry)
        except BaseException:
            if directory is not None:
                _disable_multiprocess(directory)
            raise
        endpoint = cls(httpd, thread, registry, directory)
        _Recording.endpoints += 1
        WORKER_RESTARTS()  # exported (as 0) from the start
        _LISTENING.append(endpoint)
        _LOGGER.info(
            "metrics endpoint listening",
            extra={"host": host, "port": endpoint.port, "directory": directory},
        )
        return endpoint

    @property
    def port(self) -> int:
        return int(self._httpd.server_port)

    def register(self, collector: Collector) -> None:
        """A collector run at each scrape (in the process serving it; with
        several processes, the supervisor), unregistered at `stop`."""
        self.registry.register(collector)
        self._collectors.append(collector)

    def worker_exited(self, pid: int) -> None:
        """A worker process is gone (and replaced): its live gauges must stop
        counting. They go first: a scrape that sees the restart counted
        never sees the dead worker's gauges still in the sums."""
        if self.directory is not None:
            prometheus_multiprocess.mark_process_dead(pid, self.directory)  # type: ignore[no-untyped-call]
        WORKER_RESTARTS().inc()

    def stop(self) -> None:
        if self._stopped or os.getpid() != self._owner:
            return
        self._stopped = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
        for collector in self._collectors:
            self.registry.unregister(collector)
            close = getattr(collector, "close", None)
            if callable(close):
                close()
        self._collectors.clear()
        _Recording.endpoints -= 1
        with contextlib.suppress(ValueError):
            _LISTENING.remove(self)
        if self.directory is not None:
            _disable_multiprocess(self.directory)

    def _close_in_child(self) -> None:
        """After fork, in the child: the listening socket belongs to the
        supervisor (the child has no thread serving it)."""
        with contextlib.suppress(OSError):
            self._httpd.socket.close()


_LISTENING: list[MetricsEndpoint] = []


def _after_fork_in_child() -> None:
    for endpoint in _LISTENING:
        endpoint._close_in_child()
    _LISTENING.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _enable_multiprocess() -> str:
    recorded = _recorded_families()
    if recorded:
        raise RuntimeError(
            "metric values were created before multiprocess metrics were enabled and would "
            f"be invisible to the scrape: {sorted(recorded)}"
        )
    # A fresh directory per run: files of an earlier run (or of a previous
    # process with a recycled pid) must never be summed in.
    directory = tempfile.mkdtemp(prefix="askmojo-metrics-")
    os.environ[MULTIPROC_ENV] = directory
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return directory


def _disable_multiprocess(directory: str) -> None:
    if os.environ.get(MULTIPROC_ENV) == directory:
        del os.environ[MULTIPROC_ENV]
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    shutil.rmtree(directory, ignore_errors=True)


# --- RPC metrics ----------------------------------------------------------------

RPC_HANDLED = counter(
    "askmojo_rpc_handled",
    "RPCs finished, by gRPC service, method and status code.",
    ("grpc_service", "grpc_method", "grpc_code"),
)
RPC_DURATION = histogram(
    "askmojo_rpc_duration_seconds",
    "Time from a call's arrival to its status (streams: the whole stream).",
    ("grpc_service", "grpc_method"),
    buckets=LATENCY_BUCKETS,
)
RPC_IN_FLIGHT = gauge(
    "askmojo_rpc_in_flight",
    "RPCs being handled now.",
    ("grpc_service", "grpc_method"),
    mode="livesum",
)


# Built on first use, in the supervisor: no value before multiprocess mode is on.
WORKER_RESTARTS = Lazy(
    lambda: counter(
        "askmojo_worker_restarts",
        "Worker processes (metadata WORKERS) that died and were replaced by the supervisor.",
    )
)


def server_interceptors(service: str) -> list[Any]:
    """RPCs by method and status code, latency, in flight (when metrics are
    on; `service` names the process's service in logs)."""
    if not enabled():
        return []
    return [RpcMetrics(service)]


class _MethodMetrics:
    """The labelled children of one method, made once: a call then only
    touches its own counters."""

    __slots__ = ("_codes", "_method", "_service", "duration", "in_flight")

    def __init__(self, full_method: str) -> None:
        service, _, method = full_method.lstrip("/").rpartition("/")
        self._service, self._method = service or "unknown", method
        self.duration = RPC_DURATION.labels(self._service, self._method)
        self.in_flight = RPC_IN_FLIGHT.labels(self._service, self._method)
        self._codes: dict[grpc.StatusCode, Any] = {}
        self.handled(grpc.StatusCode.OK)

    def handled(self, code: grpc.StatusCode) -> Any:
        child = self._codes.get(code)
        if child is None:
            child = RPC_HANDLED.labels(self._service, self._method, code.name)
            self._codes[code] = child
        return child

    def done(self, started: float, code: grpc.StatusCode) -> None:
        self.in_flight.dec()
        self.duration.observe(time.perf_counter() - started)
        self.handled(code).inc()


def _code_after(context: Any, error: BaseException | None) -> grpc.StatusCode:
    """The status a call ended with: what the handler set or aborted with;
    CANCELLED (DEADLINE_EXCEEDED once the deadline passed) when its task was
    cancelled; UNKNOWN for an exception gRPC turns into one."""
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):  # some grpc versions keep the raw value
        for candidate in grpc.StatusCode:
            if candidate.value[0] == code:
                return candidate
    return grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN


_HANDLERS_PER_METHOD = 4


class RpcMetrics(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts every call by gRPC service, method and status code, times it
    and keeps the number in flight. Outermost after tracing, so refusals by
    the key check and the request guard are counted too.

    Labels stay bounded: a method is labelled by name only if its
    descriptor is known (the services of the pair, health, reflection);
    calls the server has no handler for are not wrapped at all, and any
    other name a caller made up (a refusal handler may answer it before
    the method is looked up) is counted as grpc_service="unknown"."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._methods: dict[str, _MethodMetrics] = {}
        # Per method, the handlers seen lately and their wrapped forms: inner
        # interceptors return the same few objects call after call (the
        # method's own, the key check's refusals of it).
        self._handlers: dict[str, list[tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]]] = {}
        self._unknown: _MethodMetrics | None = None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        seen = self._handlers.get(method)
        if seen is not None:
            for known, wrapped in seen:
                if known is handler:
                    return wrapped
        metrics = self._methods.get(method)
        if metrics is None:
            if not _is_known_method(method):
                if self._unknown is None:
                    self._unknown = _MethodMetrics("/unknown/unknown")
                unknown = self._unknown
                # Never cached: made-up names are unbounded.
                return rewrapped_handler(handler, lambda b: _measure(b, unknown))
            metrics = self._methods[method] = _MethodMetrics(method)
        wrapped = rewrapped_handler(handler, lambda b: _measure(b, metrics))
        seen = self._handlers.setdefault(method, [])
        if len(seen) >= _HANDLERS_PER_METHOD:
            seen.pop(0)  # bounded, should an inner interceptor make new ones each call
        seen.append((handler, wrapped))
        return wrapped


def _is_known_method(full_method: str) -> bool:
    """`/package.Service/Method` of a service whose descriptor is loaded."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    try:
        found = descriptor_pool.Default().FindServiceByName(service)
    except KeyError:
        return False
    return method in found.methods_by_name


def _measure(behavior: Callable[..., Any], metrics: _MethodMetrics) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):

        async def measured_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            metrics.in_flight.inc()
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as exc:  # recorded and re-raised, whatever it is
                error = exc
                raise
            finally:
                metrics.done(started, _code_after(context, error))

        return measured_stream

    async def measured(request: Any, context: Any) -> Any:
        metrics.in_flight.inc()
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            result = behavior(request, context)
            return (await result) if inspect.isawaitable(result) else result
        except BaseException as exc:  # recorded and re-raised, whatever it is
            error = exc
            raise
        finally:
            metrics.done(started, _code_after(context, error))

    return measured
