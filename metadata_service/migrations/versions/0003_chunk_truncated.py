"""Chunks record whether the vector service truncated them (longer than the
model's window); existing chunks count as not truncated.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 17:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch_alter_table: SQLite cannot add NOT NULL columns in place; the
    # server default fills the existing rows on both backends.
    with op.batch_alter_table("chunks") as batch:
        batch.add_column(
            sa.Column("truncated", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.create_index(
            "ix_chunks_truncated",
            ["document_id"],
            unique=False,
            sqlite_where=sa.text("truncated = 1"),
            postgresql_where=sa.text("truncated = true"),
        )


def downgrade() -> None:
    with op.batch_alter_table("chunks") as batch:
        batch.drop_index("ix_chunks_truncated")
        batch.drop_column("truncated")
