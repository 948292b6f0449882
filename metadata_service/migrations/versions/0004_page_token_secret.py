"""The deployment's page token secret: one row every worker and replica reads,
so a page token one issued is accepted by all (metadata_service/paging.py).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 12:00:00

"""

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    secrets_table = op.create_table(
        "deployment_secrets",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=256), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_deployment_secrets")),
    )
    # Made here, once per database; a reader finding none makes it too.
    op.bulk_insert(secrets_table, [{"name": "page_token", "value": secrets.token_hex(32)}])


def downgrade() -> None:
    op.drop_table("deployment_secrets")
