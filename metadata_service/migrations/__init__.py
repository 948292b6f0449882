"""Alembic migrations of the metadata database, driven from code.

`python -m metadata_service.migrations` upgrades the database at DATABASE_URL
to the newest schema; the service does the same at start-up, once, before it
forks worker processes. No alembic.ini is needed.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

_LOGGER = logging.getLogger(__name__)
_HERE = Path(__file__).resolve().parent


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_HERE))
    # env.py runs on this engine (and its connect-time pragmas) rather than
    # building its own from a URL.
    config.attributes["engine"] = engine
    return config


@functools.cache
def head_revision() -> str:
    """The newest revision of the scripts shipped with this code. Cached: the
    scripts cannot change under a running process, and loading them compiles
    every migration file."""
    head = ScriptDirectory(str(_HERE)).get_current_head()
    if head is None:
        raise RuntimeError("no migration scripts found")
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def is_up_to_date(engine: Engine) -> bool:
    return current_revision(engine) == head_revision()


def upgrade(engine: Engine) -> None:
    before = current_revision(engine)
    head = head_revision()
    if before == head:
        _LOGGER.info("schema is up to date", extra={"revision": head})
        return
    _LOGGER.info("migrating schema", extra={"from_revision": before, "to_revision": head})
    command.upgrade(alembic_config(engine), "head")
    _LOGGER.info("schema migrated", extra={"revision": head})
