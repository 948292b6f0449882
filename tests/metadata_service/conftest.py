"""Fixtures shared by the metadata service's indexing-race tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from metadata_service.catalog import Catalog
from metadata_service.config import MetadataSettings
from metadata_service.db.engine import Database
from metadata_service.domain import CollectionSpec
from metadata_service.server import prepare_database
from tests.conftest import RunningServer, metadata_settings, postgres_database


@pytest.fixture
def stored(
    tmp_path: Path, vector_server: RunningServer
) -> Iterator[tuple[Database, Catalog, MetadataSettings]]:
    """A migrated SQLite file with the collection "docs", indexing through
    the session's vector service."""
    settings = metadata_settings(
        tmp_path / "metadata.db", vector_service_address=vector_server.address
    )
    prepare_database(settings)
    db = Database.from_settings(settings)
    catalog = Catalog(db, settings)
    catalog.create_collection(CollectionSpec(name="docs"))
    yield db, catalog, settings
    db.dispose()


@pytest.fixture
def pg_settings(tmp_path: Path) -> Iterator[MetadataSettings]:
    """Settings on a fresh, migrated PostgreSQL database (skipped without one)."""
    with postgres_database() as url:
        settings = metadata_settings(tmp_path / "unused.db", database_url=url)
        prepare_database(settings)
        yield settings
