"""The outbox SQL of priorities: a claim where one kind of row (status reads) only fills what
the others leave, within an allowance the caller keeps; finishing a claimed row unsent
(``transitions.skip``); and inserting rows a worker creates (not an inbound call).

Like ``app.outbox.repository``: functions take the caller's connection and never commit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    bindparam,
    text,
    update,
)

from app.db import dialect_name
from app.fastsql import insert_returning_ids
from app.identity import repository as identity_repo
from app.outbox import transitions, worker_sql
from app.outbox.models import SENDS_INDEX, SENDS_PREDICATE, Operation, State, Upstream
from app.outbox.repository import DELIVERIES, Executor, delivery_row, resolves_by_email
from app.outbox.schemas import Claimed, NewDelivery
from app.outbox.transitions import Skip


def _claim(
    conn: Executor,
    *,
    upstream: Upstream,
    condition: str,
    index: str | None = None,
    limit: int,
    now: datetime,
    lease_seconds: float,
    worker_id: str,
) -> list[Claimed]:
    """``worker_sql.claim_due`` with one more condition (the same lease, the same order), its
    statement built once per condition and dialect and run the same way."""
    dialect = dialect_name(conn)
    return worker_sql.run_claim(
        conn,
        _claim_statement(condition, index, dialect),
        {"c_upstream": upstream.value},
        limit=limit,
        now=now,
        lease_seconds=lease_seconds,
        worker_id=worker_id,
    )


@functools.lru_cache(maxsize=64)
def _claim_statement(condition: str, index: str | None, dialect: str) -> Any:
    """The claim of the due rows meeting ``condition`` (SQL made only of module constants).
    With ``index`` (a partial index whose predicate ``condition`` is, literally), the due ids
    are read through that index: SQLite has no statistics to prefer it by itself (``INDEXED
    BY``); PostgreSQL proves the predicate."""
    hint = f" INDEXED BY {index}" if index is not None and dialect == "sqlite" else ""
    lock = "" if dialect == "sqlite" else " FOR UPDATE SKIP LOCKED"
    where = (
        condition
        if index is not None
        else f"upstream = :c_upstream AND state = '{State.PENDING.value}' AND {condition}"
    )
    sql = (
        f"SELECT id FROM deliveries{hint} WHERE {where} AND next_attempt_at <= :c_now "  # noqa: S608
        f"ORDER BY next_attempt_at LIMIT :c_limit{lock}"
    )
    due = (
        text(sql)
        .bindparams(
            *([] if index is not None else [bindparam("c_upstream")]),
            bindparam("c_now", type_=DELIVERIES.c.next_attempt_at.type),
            bindparam("c_limit"),
        )
        .columns(DELIVERIES.c.id)
    )
    return worker_sql.claim_update(due.scalar_subquery())


def _operations(ops: Sequence[str], negate: bool) -> str:
    """``operation [NOT] IN ('a', 'b')`` of known operations only (spliced into SQL)."""
    known = {op.value for op in Operation}
    if not set(ops) <= known:
        raise ValueError(f"unknown operations: {sorted(set(ops) - known)}")
    listed = ", ".join(f"'{op}'" for op in ops)
    return f"operation {'NOT IN' if negate else 'IN'} ({listed})"


def claim_due_first(
    conn: Executor,
    *,
    upstream: Upstream,
    limit: int,
    now: datetime,
    lease_seconds: float,
    worker_id: str,
    low_priority: Collection[str],
    low_allowance: Callable[[int], int],
) -> tuple[list[Claimed], list[Claimed]]:
    """Lease up to ``limit`` due rows of ``upstream``: every other operation first, then rows
    of the ``low_priority`` operations in the room left, no more than ``low_allowance(room)``
    (their share of the rate, kept by the caller). Returns (high, low): high-priority rows go
    first, so they get the earlier rate slots, and a backlog of low-priority rows never takes
    a high-priority row's place."""
    ops = sorted(low_priority)
    index: str | None = None
    if upstream is Upstream.MAILMODO and ops == [Operation.CONTACT_STATUS.value]:
        # The terms of ix_deliveries_due_sends, literally: a backlog of due reads is not
        # walked through to find the triggers behind it.
        not_low, index = SENDS_PREDICATE, SENDS_INDEX
    else:
        not_low = _operations(ops, negate=True) if ops else "1 = 1"
    high = _claim(
        conn,
        upstream=upstream,
        condition=not_low,
        index=index,
        limit=limit,
        now=now,
        lease_seconds=lease_seconds,
        worker_id=worker_id,
    )
    room = limit - len(high)
    if room <= 0 or not ops:
        return high, []
    allowed = low_allowance(room)
    low = _claim(
        conn,
        upstream=upstream,
        condition=_operations(ops, negate=False),
        limit=min(room, allowed),
        now=now,
        lease_seconds=lease_seconds,
        worker_id=worker_id,
    )
    return high, low


def skip_leased(conn: Executor, claimed: Claimed, change: Skip) -> bool:
    """Finish a leased row unsent with the reason (only while this worker holds its lease)."""
    result = conn.execute(
        update(DELIVERIES)
        .where(DELIVERIES.c.id == claimed.id, DELIVERIES.c.lease_token == claimed.lease_token)
        .values(
            state=change.state,
            reason=change.reason,
            finished_at=change.updated_at,
            next_attempt_at=change.updated_at,
            updated_at=change.updated_at,
            lease_token=None,
            leased_by=None,
        )
    )
    return bool(getattr(result, "rowcount", 0))


def add_deliveries(conn: Connection, news: Sequence[NewDelivery], now: datetime) -> list[int]:
    """Insert rows a worker creates (status reads, learnt events, consent calls), admitted
    like ingested ones: an event without a CleverTap ID is resolved by email or follows
    ``BRIDGE_UNRESOLVED_IDENTITY``."""
    if not news:
        return []
    wanted = {d.email for d in news if resolves_by_email(d) and d.email}
    known = identity_repo.resolve(conn, wanted, {})
    rows = [delivery_row(d, transitions.admit(d, known, now), None, now) for d in news]
    return insert_returning_ids(conn, DELIVERIES, rows)
