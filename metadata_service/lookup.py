"""A collection found by the name a request gave, inside the caller's
transaction: the name checked, NOT_FOUND when there is none. Shared by the
RPC use cases (`catalog.py`) and the outbox (`outbox.py`).

`field` is the request field that carried the name — `name` on the
collection RPCs, `collection` on the others — so a field violation names
what the caller sent."""

from __future__ import annotations

from sqlalchemy.orm import Session

from askmojo.common.echo import quoted
from metadata_service import validation
from metadata_service.db import collection_queries
from metadata_service.db.models import CollectionRow
from metadata_service.errors import NotFound


def collection_row(
    session: Session, name: str, *, field: str = "name", lock: bool = False
) -> CollectionRow:
    """The whole row, for GetCollection and DeleteCollection (`lock`: held
    FOR UPDATE until the transaction ends)."""
    validation.collection_name(name, field)
    row = collection_queries.get_collection(session, name, lock=lock)
    if row is None:
        raise NotFound(f"collection {quoted(name)} not found")
    return row


def collection_handle(
    session: Session, name: str, *, field: str = "collection", lock: bool = False
) -> collection_queries.CollectionHandle:
    """What writes, searches and the pipeline need. `lock`: held against a
    concurrent delete until the transaction ends (a write adding rows to it;
    see collection_queries.collection_handle)."""
    validation.collection_name(name, field)
    handle = collection_queries.collection_handle(session, name, lock=lock)
    if handle is None:
        raise NotFound(f"collection {quoted(name)} not found")
    return handle
