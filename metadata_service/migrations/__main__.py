"""`python -m metadata_service.migrations`: upgrade DATABASE_URL to head."""

from __future__ import annotations

import logging

from askmojo.common.logs import configure_logging
from metadata_service.config import MetadataSettings
from metadata_service.db.engine import build_engine
from metadata_service.migrations import upgrade


def main() -> None:
    settings = MetadataSettings()
    configure_logging(settings.log_level, settings.effective_log_format)
    engine = build_engine(settings)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    logging.getLogger(__name__).info("done", extra={"database_url": engine.url.render_as_string()})


if __name__ == "__main__":
    main()
