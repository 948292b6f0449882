"""`python -m vector_service`: settings from the environment and `.env`, then
the service until Ctrl-C / SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from pydantic import ValidationError

from askmojo.common import auth, tls, tracing
from askmojo.common.logs import configure_logging
from askmojo.common.settings import invalid_settings_message
from vector_service.config import VectorSettings
from vector_service.server import serve, start_dependencies
from vector_service.store import DirectoryLock, StoreLocked

_LOGGER = logging.getLogger(__name__)


def main() -> int:
    try:
        settings = VectorSettings()
    except ValidationError as exc:
        print(invalid_settings_message("vector_service", exc), file=sys.stderr)
        return 2
    # Before the model loads: a bad certificate path fails in a second.
    refusal = auth.startup_refusal(settings) or tls.startup_refusal(settings)
    if refusal is not None:
        print(f"vector_service: {refusal}", file=sys.stderr)
        return 2
    # Before anything is logged or loaded: a second service on an embedded
    # store's directory says so in one line (which owns it, and that replicas
    # share a Chroma server instead) and exits 2, as other refusals do.
    if not settings.chroma_host:
        try:
            DirectoryLock.check(settings.chromadb_persist_directory)
        except StoreLocked as exc:
            print(f"vector_service: {exc}", file=sys.stderr)
            return 2
    configure_logging(settings.log_level, settings.effective_log_format)
    tracing.configure("askmojo-vector")
    _LOGGER.info(
        "starting vector service",
        extra={"model": settings.model_path, "workers": settings.max_workers},
    )
    # SIGTERM while the pool warms up: unwind through start_dependencies'
    # cleanup so no worker process outlives us (serve() installs its own).
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        dependencies = start_dependencies(settings)
    except StoreLocked as exc:  # taken since the check above
        _LOGGER.error("cannot start: %s", exc)
        return 2
    except KeyboardInterrupt:
        _LOGGER.info("stopped during start-up")
        return 0
    asyncio.run(serve(settings, dependencies))
    return 0


def _exit_on_signal(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
