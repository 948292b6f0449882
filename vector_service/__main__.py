"""`python -m vector_service`: settings from the environment and `.env`, then
the service until Ctrl-C / SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import sys

from pydantic import ValidationError

from askmojo.common.logs import configure_logging
from vector_service.config import VectorSettings
from vector_service.server import serve, start_dependencies
from vector_service.store import StoreLocked


def main() -> int:
    try:
        settings = VectorSettings()
    except ValidationError as exc:
        print(f"vector_service: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.effective_log_format)
    log = logging.getLogger(__name__)
    log.info(
        "starting vector service",
        extra={"model": settings.model_path, "workers": settings.max_workers},
    )
    try:
        dependencies = start_dependencies(settings)
    except StoreLocked as exc:
        log.error("cannot start: %s", exc)
        return 3
    asyncio.run(serve(settings, dependencies))
    return 0


if __name__ == "__main__":
    sys.exit(main())
