"""A collection found by the name a request gave, inside the caller's
transaction: the name checked, NOT_FOUND when there is none. Shared by the
RPC use cases (`catalog.py`) and the outbox (`outbox.py`)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from metadata_service import validation
from metadata_service.db import collection_queries
from metadata_service.db.models import CollectionRow
from metadata_service.errors import InvalidArgument, NotFound, quoted


def collection_row(session: Session, name: str) -> CollectionRow:
    """The whole row, for the RPCs whose request field is `name`."""
    validation.collection_name(name, "collection" if name else "name")
    row = collection_queries.get_collection(session, name)
    if row is None:
        raise NotFound(f"collection {quoted(name)} not found")
    return row


def collection_handle(session: Session, name: str) -> collection_queries.CollectionHandle:
    """What writes and the pipeline need, for the RPCs whose request field is
    `collection`."""
    if not name:
        raise InvalidArgument("collection", "collection name must not be empty")
    validation.collection_name(name, "collection")
    handle = collection_queries.collection_handle(session, name)
    if handle is None:
        raise NotFound(f"collection {quoted(name)} not found")
    return handle
