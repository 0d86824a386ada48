"""The outbox SQL of priorities: a claim where one kind of row (status reads) only fills what
the others leave, within an allowance the caller keeps; finishing a claimed row unsent
(``transitions.skip``); and inserting rows a worker creates (not an inbound call).

Like ``app.outbox.repository``: functions take the caller's connection and never commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    TextClause,
    bindparam,
    select,
    text,
    true,
    update,
)
from sqlalchemy.orm import Session

from app.fastsql import insert_returning_ids
from app.identity import repository as identity_repo
from app.outbox import transitions
from app.outbox.models import SENDS_INDEX, SENDS_PREDICATE, Operation, State, Upstream
from app.outbox.repository import DELIVERIES, Executor
from app.outbox.schemas import Claimed, NewDelivery
from app.outbox.transitions import Skip


def _claim(
    conn: Executor,
    *,
    upstream: Upstream,
    extra: ColumnElement[bool] | TextClause,
    index: str | None = None,
    limit: int,
    now: datetime,
    lease_seconds: float,
    worker_id: str,
) -> list[Claimed]:
    """``repository.claim_due`` with one more condition (the same lease, the same order)."""
    if limit <= 0:
        return []
    table = DELIVERIES
    due: Any
    if index is not None and isinstance(extra, TextClause):
        due = _indexed_due(conn, index, extra, now, limit)
    else:
        due = (
            select(table.c.id)
            .where(
                table.c.upstream == upstream.value,
                table.c.state == State.PENDING.value,
                table.c.next_attempt_at <= now,
                extra,
            )
            .order_by(table.c.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
    token = uuid.uuid4().hex
    until = now + timedelta(seconds=lease_seconds)
    rows = conn.execute(
        update(table)
        .where(table.c.id.in_(due))
        .values(lease_token=token, leased_by=worker_id, next_attempt_at=until, updated_at=now)
        .returning(
            table.c.id,
            table.c.operation,
            table.c.target,
            table.c.email,
            table.c.clevertap_id,
            table.c.payload,
            table.c.attempts,
            table.c.deferrals,
            table.c.upstream_ref,
        )
    ).all()
    claimed = [
        Claimed(
            id=r.id,
            operation=r.operation,
            target=r.target,
            email=r.email,
            clevertap_id=r.clevertap_id,
            payload=r.payload,
            attempts=r.attempts,
            deferrals=r.deferrals,
            lease_token=token,
            leased_until=until,
            upstream_ref=r.upstream_ref,
        )
        for r in rows
    ]
    claimed.sort(key=lambda c: c.id)
    return claimed


def _indexed_due(conn: Executor, index: str, where: TextClause, now: datetime, limit: int) -> Any:
    """The due ids of a partial index's rows, read through that index: SQLite has no
    statistics to prefer it by itself (``INDEXED BY``); PostgreSQL proves the predicate."""
    dialect = conn.get_bind().dialect.name if isinstance(conn, Session) else conn.dialect.name
    hint = f" INDEXED BY {index}" if dialect == "sqlite" else ""
    lock = "" if dialect == "sqlite" else " FOR UPDATE SKIP LOCKED"
    # Only module constants are spliced in (the index name and its predicate).
    sql = (
        f"SELECT id FROM deliveries{hint} WHERE {where.text} AND next_attempt_at <= :due_now "  # noqa: S608
        f"ORDER BY next_attempt_at LIMIT :due_limit{lock}"
    )
    stmt = (
        text(sql)
        .bindparams(
            bindparam("due_now", now, type_=DELIVERIES.c.next_attempt_at.type),
            bindparam("due_limit", limit),
        )
        .columns(DELIVERIES.c.id)
    )
    return stmt.scalar_subquery()


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
    if upstream is Upstream.MAILMODO and ops == [Operation.CONTACT_STATUS.value]:
        # The terms of ix_deliveries_due_sends, literally: a backlog of due reads is not
        # walked through to find the triggers behind it.
        not_low: ColumnElement[bool] | TextClause = text(SENDS_PREDICATE)
    else:
        not_low = DELIVERIES.c.operation.not_in(ops) if ops else true()
    high = _claim(
        conn,
        upstream=upstream,
        extra=not_low,
        index=SENDS_INDEX if isinstance(not_low, TextClause) else None,
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
        extra=DELIVERIES.c.operation.in_(ops),
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
    wanted = {
        d.email
        for d in news
        if d.identity_policy is not None and d.clevertap_id is None and d.email
    }
    known = identity_repo.resolve(conn, wanted, {})
    rows: list[dict[str, Any]] = []
    for d in news:
        a = transitions.admit(d, known, now)
        rows.append(
            {
                "inbound_call_id": None,
                "direction": d.direction.value,
                "upstream": d.upstream.value,
                "operation": d.operation.value,
                "target": d.target,
                "email": d.email,
                "clevertap_id": a.clevertap_id,
                "payload": d.payload,
                "state": a.state,
                "attempts": 0,
                "deferrals": 0,
                "next_attempt_at": a.next_attempt_at,
                "reason": a.reason,
                "created_at": now,
                "updated_at": now,
                "finished_at": a.finished_at,
            }
        )
    return insert_returning_ids(conn, DELIVERIES, rows)
