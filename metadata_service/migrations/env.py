"""Alembic environment: runs migrations on the engine passed in
`config.attributes["engine"]` (see metadata_service.migrations)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from metadata_service.db.models import Base


def run_migrations() -> None:
    engine = context.config.attributes["engine"]
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            # SQLite cannot ALTER most things in place; batch mode copies the table.
            render_as_batch=engine.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            if engine.dialect.name == "postgresql":
                # Replicas starting together must not migrate concurrently;
                # the lock is released when the transaction ends.
                connection.execute(text("SELECT pg_advisory_xact_lock(72417001)"))
            context.run_migrations()


run_migrations()
