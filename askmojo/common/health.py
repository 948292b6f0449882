"""Readiness for grpc.health.v1, shared by both services.

gRPC's HealthServicer starts out SERVING for "", before anything is known.
`ReadinessProbe` marks every service NOT_SERVING first, then runs the
service's blocking check on a thread of its own (RPC work must not delay it,
nor a hung dependency stall the event loop) with a time limit, repeatedly,
and publishes what it finds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

_LOGGER = logging.getLogger(__name__)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

# Service name -> ready? "" (the whole server) must be among the keys.
Check = Callable[[], Mapping[str, bool]]


class ReadinessProbe:
    def __init__(
        self,
        services: Sequence[str],
        check: Check,
        *,
        interval: float,
        timeout: float,
    ) -> None:
        self.servicer = HealthServicer()
        self._services = tuple(services)
        self._check = check
        self._interval = interval
        self._timeout = timeout
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="health-probe")
        self._task: asyncio.Task[None] | None = None

    def register(self, server: object) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    async def start(self) -> None:
        """Call before the server starts; the first probe runs at once."""
        for service in self._services:
            await self.servicer.set(service, NOT_SERVING)
        await self.probe_once()
        self._task = asyncio.create_task(self._forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.servicer.enter_graceful_shutdown()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def probe_once(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            ready = await asyncio.wait_for(
                loop.run_in_executor(self._executor, self._check), self._timeout
            )
        except Exception as exc:  # any failure means "not ready", never a crash
            _LOGGER.warning("readiness probe failed: %s", exc)
            ready = {}
        for service in self._services:
            await self.servicer.set(service, SERVING if ready.get(service) else NOT_SERVING)

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.probe_once()
