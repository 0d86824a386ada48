"""SQL of leases beyond claiming and finishing (``app.outbox.repository``): which leases a
worker's batch of outcomes still holds, and taking back the leases of workers that are gone.

Functions take the caller's connection and never commit. ``app.system.recovery`` decides which
workers are gone; this module only applies ``transitions.reclaim_lease`` under its guard (the
row is still leased by that worker), so a row that was meanwhile finished, given back or
claimed by someone else is left alone.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import select, update

from app.db import dialect_name
from app.fastsql import sqlite_unindexed
from app.outbox.repository import DELIVERIES, Executor, in_states
from app.outbox.transitions import Edge, LeaseReclaim
from app.outbox.worker_sql import finish_held, leases_held, still_leased

__all__ = ["finish_held", "leases_held", "lessees", "reclaim_leases", "still_leased"]

#: Ids per IN (...) list or UPDATE: far below any backend's limit on bound parameters.
_CHUNK = 1000


def lessees(conn: Executor) -> set[str]:
    """The workers that hold at least one lease (read through the partial index of leased
    rows, so it costs the same with a million pending rows)."""
    leased_by = DELIVERIES.c.leased_by
    rows = conn.execute(select(leased_by).distinct().where(leased_by.is_not(None)))
    return {str(worker_id) for (worker_id,) in rows}


def reclaim_leases(
    conn: Executor,
    change: LeaseReclaim,
    workers: Collection[str],
    *,
    leased_before: datetime | None = None,
) -> int:
    """Rows leased by ``workers`` become due now, unleased, with no attempt used; with
    ``leased_before``, only rows claimed before then (``updated_at`` is the claim time while a
    row is leased: nothing else writes a leased row). Returns how many rows came back."""
    assert change.edge is Edge.RECLAIM_LEASE
    if not workers:
        return 0
    table = DELIVERIES
    held = table.c.leased_by.is_not(None) & table.c.leased_by.in_(sorted(workers))
    # First the ids, through the partial index of leased rows (a handful): on the whole table a
    # planner may prefer the state index and walk every pending row of a large backlog.
    ids = [row_id for (row_id,) in conn.execute(select(table.c.id).where(held))]
    taken = 0
    for start in range(0, len(ids), _CHUNK):
        stmt = update(table).where(
            table.c.id.in_(ids[start : start + _CHUNK]), held, in_states(change.from_states)
        )
        if leased_before is not None:
            # On SQLite as ``+updated_at`` (no index can serve it): with the plain column it
            # chose the index on (state, updated_at, upstream) and walked every pending row
            # claimed before then (3 ms at 22,000 pending, growing with a backlog, each
            # heartbeat tick) instead of looking the ids above up.
            claimed_at = (
                sqlite_unindexed(table.c.updated_at)
                if dialect_name(conn) == "sqlite"
                else table.c.updated_at
            )
            stmt = stmt.where(claimed_at < leased_before)
        result = conn.execute(
            stmt.values(
                lease_token=None,
                leased_by=None,
                next_attempt_at=change.updated_at,
                updated_at=change.updated_at,
            )
        )
        taken += int(getattr(result, "rowcount", 0) or 0)
    return taken
