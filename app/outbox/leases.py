"""SQL of a worker's batch of outcomes: which of its leases it still holds.

Kept apart from ``repository`` (the outbox's other SQL) only for size; same rules: functions
take the caller's connection and never commit.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select

from app.outbox.repository import DELIVERIES, Claimed, Executor

#: Ids per IN (...) list.
_CHUNK = 1000


def still_leased(conn: Executor, rows: Sequence[Claimed]) -> set[int]:
    """The ids of ``rows`` whose lease the caller still holds (same token), locked until the
    end of the transaction on PostgreSQL (SQLite's write lock is already held), so no lease
    moves before the caller's ``finish_many``: a batch learns exactly which rows it lost."""
    tokens = {row.id: row.lease_token for row in rows}
    ids = list(tokens)
    held: set[int] = set()
    for start in range(0, len(ids), _CHUNK):
        found = conn.execute(
            select(DELIVERIES.c.id, DELIVERIES.c.lease_token)
            .where(DELIVERIES.c.id.in_(ids[start : start + _CHUNK]))
            .with_for_update()
        ).all()
        held.update(row_id for row_id, token in found if token == tokens[row_id])
    return held
