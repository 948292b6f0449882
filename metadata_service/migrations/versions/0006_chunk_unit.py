"""Collections record what their chunk sizes count (chunk_unit: CHARACTERS or
TOKENS, issue #14); existing collections count characters, as they always did.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 09:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN (SQLite allows NOT NULL with a default), not
    # batch_alter_table: rebuilding `collections` would drop the table its
    # documents reference with ON DELETE CASCADE.
    op.add_column(
        "collections",
        sa.Column("chunk_unit", sa.String(16), nullable=False, server_default="CHARACTERS"),
    )


def downgrade() -> None:
    with op.batch_alter_table("collections") as batch:
        batch.drop_column("chunk_unit")
