"""Indexing pipeline: vector collection names, document incarnations, chunk
leases and the vector deletion outbox.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 00:40:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch_alter_table: SQLite cannot add NOT NULL columns in place.
    with op.batch_alter_table("collections") as batch:
        batch.add_column(
            sa.Column("vector_collection", sa.String(length=128), nullable=False, server_default="")
        )
    # Collections from before the pipeline have no vectors yet: their vector
    # collection takes their own name.
    op.execute("UPDATE collections SET vector_collection = name WHERE vector_collection = ''")
    with op.batch_alter_table("documents") as batch:
        batch.add_column(
            sa.Column("incarnation", sa.BigInteger(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("chunks") as batch:
        batch.add_column(sa.Column("lease_until", sa.DateTime(), nullable=True))
    op.create_table(
        "vector_deletions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("vector_collection", sa.String(length=128), nullable=False),
        sa.Column("document_id", sa.String(length=512), nullable=True),
        sa.Column("incarnation", sa.BigInteger(), nullable=True),
        sa.Column("first_ordinal", sa.Integer(), nullable=False),
        sa.Column("max_generation", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("lease_until", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vector_deletions")),
    )


def downgrade() -> None:
    op.drop_table("vector_deletions")
    with op.batch_alter_table("chunks") as batch:
        batch.drop_column("lease_until")
    with op.batch_alter_table("documents") as batch:
        batch.drop_column("incarnation")
    with op.batch_alter_table("collections") as batch:
        batch.drop_column("vector_collection")
