"""The embedding process pool.

`spawn` workers (never `fork`: the parent has gRPC and torch state that must
not be copied mid-flight), each loading the model once. A worker that dies
(SIGKILL, out of memory) breaks a ProcessPoolExecutor for good, so the pool is
replaced: the batches in flight fail with `PoolUnavailable` (UNAVAILABLE on
the wire), `ready` is False while the new workers load, and later batches
succeed.

The pool runs MAX_WORKERS + EXPRESS_WORKERS identical processes; the batcher
decides which work may occupy how many of them at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures.process import BrokenProcessPool

from vector_service import metrics
from vector_service.config import VectorSettings
from vector_service.embedding import worker
from vector_service.embedding.worker import BatchResult, ModelShape

_LOGGER = logging.getLogger(__name__)
_WARM_UP_TIMEOUT_S = 300.0


class PoolUnavailable(Exception):
    """The pool lost a worker (or is rebuilding); the batch did not run."""


class EmbeddingPool:
    def __init__(self, settings: VectorSettings) -> None:
        self._settings = settings
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        self._rebuilding = False
        self._closed = False
        self.shape: ModelShape | None = None
        self.rebuilds = 0

    # --- lifecycle (blocking: call before the gRPC server exists, or in a thread)

    def start(self) -> ModelShape:
        """Starts the workers and waits until every one has its model loaded."""
        started = time.monotonic()
        if self._settings.oversubscribed:
            _LOGGER.warning(
                "MAX_WORKERS x TORCH_THREADS exceeds the CPUs: threads will contend",
                extra={
                    "workers": self._settings.max_workers,
                    "threads_per_worker": self._settings.threads_per_worker,
                },
            )
        executor = self._new_executor()
        try:
            self.shape = self._warm_up(executor)
        except BaseException:
            # A model that fails to load (or Ctrl+C while it loads) must not
            # leave spawned workers behind.
            _shutdown_executor(executor)
            raise
        with self._lock:
            self._executor = executor
        _LOGGER.info(
            "embedding pool warm",
            extra={
                "workers": self._settings.max_workers,
                "express_workers": self._settings.express_workers,
                "threads_per_worker": self._settings.threads_per_worker,
                "dimension": self.shape.dimension,
                "seconds": round(time.monotonic() - started, 1),
            },
        )
        return self.shape

    def _warm_up(self, executor: concurrent.futures.ProcessPoolExecutor) -> ModelShape:
        """Returns once every worker process answered, i.e. has its model:
        the first real batch must not pay for loading."""
        started = time.monotonic()
        shape = executor.submit(worker.model_shape).result(timeout=_WARM_UP_TIMEOUT_S)
        pids: set[int] = set()
        while len(pids) < self._settings.worker_processes:
            if time.monotonic() - started > _WARM_UP_TIMEOUT_S:
                raise TimeoutError("embedding workers did not all start in time")
            pings = [
                executor.submit(worker.ping, 0.05)
                for _ in range(self._settings.worker_processes * 2)
            ]
            pids |= {p.result(timeout=_WARM_UP_TIMEOUT_S) for p in pings}
        return shape

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True  # a rebuild running now discards its pool
            executor, self._executor = self._executor, None
        if executor is not None:
            _shutdown_executor(executor)

    @property
    def ready(self) -> bool:
        """False while rebuilding, and as soon as a worker has died even if
        no batch noticed yet (an idle pool): the rebuild starts here then."""
        executor = self._executor
        if executor is None or self._rebuilding:
            return False
        # ProcessPoolExecutor's manager thread watches its workers and sets
        # `_broken` when one exits; it is the executor's own verdict.
        if getattr(executor, "_broken", False):
            self._schedule_rebuild(executor, reason="a worker exited while idle")
            return False
        return True

    def worker_pids(self) -> list[int]:
        executor = self._executor
        processes = getattr(executor, "_processes", None) or {}
        return sorted(int(pid) for pid in processes)

    # --- work

    async def embed(self, texts: list[str], interactive: bool = False) -> BatchResult:
        executor = self._executor
        if executor is None or self._rebuilding:
            raise PoolUnavailable("the embedding pool is restarting; retry shortly")
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(executor, worker.embed, texts, interactive)
            return await asyncio.wait_for(future, self._settings.batch_timeout)
        except (BrokenProcessPool, TimeoutError) as exc:
            # A dead or hung worker: replace the whole pool (a broken
            # ProcessPoolExecutor never recovers) without blocking the loop.
            self._schedule_rebuild(executor, reason=type(exc).__name__)
            raise PoolUnavailable(
                "an embedding worker died while embedding this batch; the pool is restarting"
            ) from exc

    # --- internals

    def _new_executor(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=self._settings.worker_processes,
            mp_context=self._context,
            initializer=worker.initialize,
            initargs=(
                self._settings.model_path,
                self._settings.threads_per_worker,
                self._settings.bulk_nice,
                self._settings.embedding_backend,
                self._settings.model_cache_dir,
            ),
        )

    def _schedule_rebuild(
        self, broken: concurrent.futures.ProcessPoolExecutor, reason: str
    ) -> None:
        with self._lock:
            if self._executor is not broken or self._rebuilding:
                return  # another failed batch already started the rebuild
            self._rebuilding = True
        # A label: the exception's class name, or "worker_exited" (found idle).
        metrics.pool_restarting(reason if reason.isidentifier() else "worker_exited")
        _LOGGER.error("embedding pool broken; rebuilding", extra={"reason": reason})
        threading.Thread(target=self._rebuild, args=(broken,), daemon=True).start()

    def _rebuild(self, broken: concurrent.futures.ProcessPoolExecutor) -> None:
        _shutdown_executor(broken)
        while not self._closed:
            fresh = self._new_executor()
            try:
                self._warm_up(fresh)
            except Exception as exc:  # keep trying: the service is useless without a pool
                _shutdown_executor(fresh)
                _LOGGER.error("embedding pool rebuild failed; retrying: %s", exc)
                time.sleep(1.0)
                continue
            with self._lock:
                if not self._closed:
                    self._executor = fresh
                    self._rebuilding = False
                    self.rebuilds += 1
                    _LOGGER.info("embedding pool rebuilt", extra={"rebuilds": self.rebuilds})
                    return
            _shutdown_executor(fresh)  # shut down while we were warming up


def _shutdown_executor(executor: concurrent.futures.ProcessPoolExecutor) -> None:
    """Stops the workers and makes sure none outlives us (a hung one is killed)."""
    processes = list((getattr(executor, "_processes", None) or {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + 5
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive() and process.pid is not None:
            with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                os.kill(process.pid, signal.SIGKILL)
            process.join(1)
