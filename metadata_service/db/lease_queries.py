"""Renewing a lease while its pass runs, and giving back, at shutdown, every
lease a process still holds: its chunks and deletion rows become claimable
at once instead of after INDEX_LEASE_SECONDS. Functions take the caller's
session and never commit."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, text, update
from sqlalchemy.orm import Session

from metadata_service.db.models import ChunkRow, VectorDeletionRow
from metadata_service.domain import IndexState

# Leases per statement: well under every backend's bound-parameter limit.
_PER_STATEMENT = 500
# The outbox index's condition (see outbox_queries._IN_OUTBOX): only
# unfinished chunks can hold a lease, and the planner needs it stated.
_IN_OUTBOX = text("chunks.state != 'INDEXED'")


def give_back(session: Session, leases: Collection[datetime]) -> tuple[int, int]:
    """Unleases the PENDING chunks and the deletion rows held under any of
    `leases`; returns how many of each."""
    ordered = sorted(leases)
    chunks = deletions = 0
    for start in range(0, len(ordered), _PER_STATEMENT):
        part = ordered[start : start + _PER_STATEMENT]
        chunks += _rowcount(
            session.execute(
                update(ChunkRow)
                .where(
                    _IN_OUTBOX,
                    ChunkRow.state == IndexState.PENDING,
                    ChunkRow.lease_until.in_(part),
                )
                .values(lease_until=None)
                .execution_options(synchronize_session=False)
            )
        )
        deletions += _rowcount(
            session.execute(
                update(VectorDeletionRow)
                .where(VectorDeletionRow.lease_until.in_(part))
                .values(lease_until=None)
                .execution_options(synchronize_session=False)
            )
        )
    return chunks, deletions


def renew(session: Session, lease: datetime, renewed: datetime) -> int:
    """Moves the PENDING chunks still held under `lease` to `renewed` (a
    later expiry, and the claim's token from now on); returns how many. A
    chunk rewritten or taken over meanwhile carries another lease and is
    left alone, as a settle would leave it."""
    return _rowcount(
        session.execute(
            update(ChunkRow)
            .where(_IN_OUTBOX, ChunkRow.state == IndexState.PENDING, ChunkRow.lease_until == lease)
            .values(lease_until=renewed)
            .execution_options(synchronize_session=False)
        )
    )


def _rowcount(result: object) -> int:
    return int(cast(CursorResult[Any], result).rowcount)
