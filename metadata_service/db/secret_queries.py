"""The deployment's page token secret (catalog.Catalog._tokens): one row,
made by migration 0004 or by the first reader that finds none. Functions take
the caller's session and never commit."""

from __future__ import annotations

from sqlalchemy import (
    select,
    text,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import column, table
from sqlalchemy.types import String

_SECRETS = table("deployment_secrets", column("name", String), column("value", String))


_PAGE_TOKEN_SECRET = "page_token"


def page_token_secret(session: Session) -> str | None:
    stmt = select(_SECRETS.c.value).where(_SECRETS.c.name == _PAGE_TOKEN_SECRET)
    return session.execute(stmt).scalar_one_or_none()


def add_page_token_secret(session: Session, candidate: str) -> str:
    """Stores `candidate` unless another worker or replica stored one first;
    returns the one stored. ON CONFLICT raises nothing, so a transaction
    shared with other writers (SQLite group commit) is never spoilt."""
    session.execute(
        text(
            "INSERT INTO deployment_secrets (name, value) VALUES (:name, :value) "
            "ON CONFLICT (name) DO NOTHING"
        ),
        {"name": _PAGE_TOKEN_SECRET, "value": candidate},
    )
    stored = page_token_secret(session)
    assert stored is not None  # inserted just now, or there already
    return stored
