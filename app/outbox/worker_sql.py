"""The worker's hot statements, built once: claim under a lease, check the leases of a batch,
finish it, insert its attempts.

A worker round runs each of these once per transaction, a few hundred times a second. Building
a SQLAlchemy statement and computing its cache key cost more than running it, and on SQLite
so does SQLAlchemy's execution itself (~100 µs): the statements are module constants, and on
SQLite they run on the driver's cursor, compiled once (``app.fastsql``), in the caller's
transaction. PostgreSQL runs the same constants through SQLAlchemy, the claim with
``FOR UPDATE SKIP LOCKED``. Same rules as ``repository`` (which re-exports these): functions
take the caller's connection and never commit; a row is only written under its lease token.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, select, update
from sqlalchemy.orm import Session

from app.fastsql import driver_cursor, row_insert, sqlite_plan
from app.outbox.models import Attempt, Delivery, State, Upstream
from app.outbox.schemas import Claimed
from app.outbox.transitions import AttemptChange, LeaseRelease

Executor = Connection | Session
_D = cast(Table, Delivery.__table__)
_ATTEMPTS = cast(Table, Attempt.__table__)
_TIME = _D.c.next_attempt_at.type

#: Ids per IN (...) list.
_CHUNK = 1000

_DUE = (
    select(_D.c.id)
    .where(
        _D.c.upstream == bindparam("c_upstream"),
        _D.c.state == State.PENDING.value,
        _D.c.next_attempt_at <= bindparam("c_now", type_=_TIME),
    )
    .order_by(_D.c.next_attempt_at)
    .limit(bindparam("c_limit"))
    .with_for_update(skip_locked=True)
)


def claim_update(due: Any) -> Any:
    """The claim: lease the rows ``due`` (a scalar subquery of ids, with the parameters
    ``c_now``/``c_limit`` and any of its own) under a new token; their columns come back."""
    return (
        update(_D)
        .where(_D.c.id.in_(due))
        .values(
            lease_token=bindparam("c_token"),
            leased_by=bindparam("c_worker"),
            next_attempt_at=bindparam("c_until", type_=_TIME),
            updated_at=bindparam("c_now", type_=_TIME),
        )
        .returning(
            _D.c.id,
            _D.c.operation,
            _D.c.target,
            _D.c.email,
            _D.c.clevertap_id,
            _D.c.payload,
            _D.c.attempts,
            _D.c.deferrals,
            _D.c.upstream_ref,
        )
    )


_CLAIM = claim_update(_DUE.scalar_subquery())

#: A worker's change of one of its rows, guarded by the lease token (SET columns by name).
_FINISH = update(_D).where(_D.c.id == bindparam("b_id"), _D.c.lease_token == bindparam("b_token"))
_TOKENS = select(_D.c.id, _D.c.lease_token).where(_D.c.id.in_(bindparam("ids", expanding=True)))
_HELD = _TOKENS.with_for_update()


def _is_sqlite(conn: Executor) -> bool:
    return isinstance(conn, Connection) and conn.dialect.name == "sqlite"


def claim_due(
    conn: Executor,
    *,
    upstream: Upstream,
    limit: int,
    now: datetime,
    lease_seconds: float,
    worker_id: str,
) -> list[Claimed]:
    """Lease up to ``limit`` due rows: they leave the due set until the lease runs out, so a
    crashed worker's rows come back by themselves."""
    return run_claim(
        conn,
        _CLAIM,
        {"c_upstream": upstream.value},
        limit=limit,
        now=now,
        lease_seconds=lease_seconds,
        worker_id=worker_id,
    )


def run_claim(
    conn: Executor,
    statement: Any,
    params: dict[str, Any],
    *,
    limit: int,
    now: datetime,
    lease_seconds: float,
    worker_id: str,
) -> list[Claimed]:
    """Run a claim built by ``claim_update`` (``params``: its subquery's own parameters), on
    SQLite's driver cursor with its SQL compiled once; the claimed rows in id order."""
    if limit <= 0:
        return []
    token = uuid.uuid4().hex
    until = now + timedelta(seconds=lease_seconds)
    params = {
        **params,
        "c_now": now,
        "c_limit": limit,
        "c_token": token,
        "c_worker": worker_id,
        "c_until": until,
    }
    rows: Sequence[Sequence[Any]]
    if _is_sqlite(conn):
        assert isinstance(conn, Connection)
        plan = sqlite_plan(conn.dialect, statement)
        cursor = driver_cursor(conn)
        try:
            rows = cursor.execute(plan.sql, plan.args(params)).fetchall()
        finally:
            cursor.close()
    else:
        rows = conn.execute(statement, params).all()
    claimed = [
        Claimed(
            id=r[0],
            operation=r[1],
            target=r[2],
            email=r[3],
            clevertap_id=r[4],
            payload=r[5],
            attempts=r[6],
            deferrals=r[7],
            lease_token=token,
            leased_until=until,
            upstream_ref=r[8],
        )
        for r in rows
    ]
    claimed.sort(key=lambda c: c.id)
    return claimed


def leased_values(change: AttemptChange | LeaseRelease) -> dict[str, Any]:
    """The columns a worker's change sets; the lease goes either way."""
    if isinstance(change, LeaseRelease):
        return {
            "lease_token": None,
            "leased_by": None,
            "next_attempt_at": change.updated_at,
            "updated_at": change.updated_at,
        }
    return {
        "state": change.state,
        "attempts": change.attempts,
        "deferrals": change.deferrals,
        "next_attempt_at": change.next_attempt_at,
        "reason": change.reason,
        "upstream_ref": change.upstream_ref,
        "finished_at": change.finished_at,
        "last_status_code": change.last_status_code,
        "updated_at": change.updated_at,
        "lease_token": None,
        "leased_by": None,
    }


def _finish_params(rows: Sequence[tuple[Claimed, AttemptChange]]) -> list[dict[str, Any]]:
    return [
        {"b_id": claimed.id, "b_token": claimed.lease_token} | leased_values(change)
        for claimed, change in rows
    ]


def finish_many(conn: Executor, rows: Sequence[tuple[Claimed, AttemptChange]]) -> int:
    """Apply many attempt changes at once (an upload batch), each under its own lease."""
    if not rows:
        return 0
    if _is_sqlite(conn):
        return len(finish_held(conn, rows))
    result = conn.execute(_FINISH, _finish_params(rows))
    return int(getattr(result, "rowcount", 0) or 0)


def finish_held(conn: Executor, rows: Sequence[tuple[Claimed, AttemptChange]]) -> set[int]:
    """Apply each change under its row's lease; the ids whose lease was still the caller's
    (the others keep the state their new owner gives them).

    SQLite (its write lock held by this transaction) learns it from each guarded UPDATE's row
    count; PostgreSQL locks the rows first (``still_leased``), so no lease moves between the
    check and the UPDATE.
    """
    if not rows:
        return set()
    if not _is_sqlite(conn):
        held = still_leased(conn, [claimed for claimed, _ in rows])
        finish_many(conn, [(claimed, change) for claimed, change in rows if claimed.id in held])
        return held
    assert isinstance(conn, Connection)
    params = _finish_params(rows)
    keys = tuple(k for k in params[0] if not k.startswith("b_"))
    plan = sqlite_plan(conn.dialect, _FINISH, keys)
    held = set()
    cursor = driver_cursor(conn)
    try:
        for (claimed, _), values in zip(rows, params, strict=True):
            if cursor.execute(plan.sql, plan.args(values)).rowcount:
                held.add(claimed.id)
    finally:
        cursor.close()
    return held


def still_leased(conn: Executor, rows: Sequence[Claimed]) -> set[int]:
    """The ids of ``rows`` whose lease the caller still holds (same token), locked until the
    end of the transaction on PostgreSQL (SQLite's write lock is already held), so no lease
    moves before the caller's ``finish_many``: a batch learns exactly which rows it lost."""
    return _tokens_match(conn, rows, _HELD)


def leases_held(conn: Executor, rows: Sequence[Claimed]) -> set[int]:
    """The ids of ``rows`` whose lease token is still the row's: a plain read, no lock (the
    worker's look before a call, outside any write)."""
    return _tokens_match(conn, rows, _TOKENS)


def _tokens_match(conn: Executor, rows: Sequence[Claimed], query: Any) -> set[int]:
    """The ids of ``rows`` whose lease token ``query`` (ids in, id and token out) reads back."""
    tokens = {row.id: row.lease_token for row in rows}
    ids = list(tokens)
    held: set[int] = set()
    for start in range(0, len(ids), _CHUNK):
        found = conn.execute(query, {"ids": ids[start : start + _CHUNK]}).all()
        held.update(row_id for row_id, token in found if token == tokens[row_id])
    return held


def add_attempts(conn: Executor, rows: list[dict[str, Any]]) -> None:
    """Insert attempt rows (all with the same keys)."""
    if not rows:
        return
    if not _is_sqlite(conn):
        conn.execute(_ATTEMPTS.insert(), rows)
        return
    assert isinstance(conn, Connection)
    plan = row_insert(conn.dialect, _ATTEMPTS, tuple(rows[0]))
    cursor = driver_cursor(conn)
    try:
        cursor.executemany(plan.sql, plan.params(rows))
    finally:
        cursor.close()
