"""All SQL of the operator's tools: listing, one delivery in full, replay, cancel, purge, stats.

Functions take a ``Connection`` opened by the caller and never commit, like the outbox
repository. Every state change applies a change of ``app.outbox.transitions`` guarded in its
``WHERE`` clause (its from-states, no live lease), so an operator racing a worker never
overwrites the worker's result nor sends an item twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    and_,
    case,
    delete,
    exists,
    func,
    not_,
    or_,
    select,
    update,
)

from app.fastsql import sqlite_unindexed
from app.identity.repository import IDENTITIES
from app.outbox.models import CallStatus, State, Upstream
from app.outbox.repository import ATTEMPTS, CALLS, DELIVERIES, in_states
from app.outbox.transitions import Cancellation, OperatorReplay, Purge
from app.system import repository as system_repo
from app.system.models import UpstreamState, WorkerHeartbeat

#: Columns shown in listings: everything but the payload, which only the detail view carries.
LIST_COLUMNS = [c for c in DELIVERIES.c if c.name != "payload"]


@dataclass(frozen=True, slots=True)
class DeliveryFilter:
    """Which deliveries an operator means; every field left empty matches everything."""

    direction: str | None = None
    upstream: str | None = None
    states: tuple[str, ...] = ()
    email: str | None = None
    target: str | None = None
    operation: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    #: On ``updated_at``: for a failed, dead or delivered item, when it got there.
    updated_after: datetime | None = None
    updated_before: datetime | None = None
    #: The last HTTP status; 0 picks items that got no answer (timeout, network error).
    status_code: int | None = None
    #: The exact current reason; "" picks items without one.
    reason: str | None = None

    @property
    def narrows_deliveries(self) -> bool:
        """Whether it picks deliveries by what they are, not only by state and time."""
        return any(
            v is not None
            for v in (
                self.direction,
                self.upstream,
                self.email,
                self.target,
                self.operation,
                self.status_code,
                self.reason,
            )
        )

    @property
    def has_time_range(self) -> bool:
        return any(
            v is not None
            for v in (
                self.created_after,
                self.created_before,
                self.updated_after,
                self.updated_before,
            )
        )


def _target_is(target: str) -> ColumnElement[bool]:
    """Rows for ``target`` as the operator typed it. Mailmojo list ids are stored as Mailmojo
    writes them ("042" is list 42, ``app.inbound.from_clevertap``): a number with leading
    zeros finds those rows too."""
    c = DELIVERIES.c
    if target.isascii() and target.isdecimal() and len(target) > 1 and target[0] == "0":
        number = str(int(target))
        return or_(
            c.target == target, and_(c.upstream == Upstream.MAILMOJO.value, c.target == number)
        )
    return c.target == target


def conditions(f: DeliveryFilter) -> list[ColumnElement[bool]]:
    c = DELIVERIES.c
    where: list[ColumnElement[bool]] = []
    if f.direction is not None:
        where.append(c.direction == f.direction)
    if f.upstream is not None:
        where.append(c.upstream == f.upstream)
    if f.states:
        # One state is written ``state = x``: a page of it, newest first, then reads straight
        # off ``ix_deliveries_state_id`` (an IN list makes SQLite sort every matching row).
        where.append(in_states(frozenset(State(s) for s in f.states)))
    if f.email is not None:
        # Stored lower-cased, so the plain index on email serves the lookup.
        where.append(c.email == f.email.strip().lower())
    if f.target is not None:
        where.append(_target_is(f.target))
    if f.operation is not None:
        where.append(c.operation == f.operation)
    if f.created_after is not None:
        where.append(c.created_at >= f.created_after)
    if f.created_before is not None:
        where.append(c.created_at < f.created_before)
    if f.updated_after is not None:
        where.append(c.updated_at >= f.updated_after)
    if f.updated_before is not None:
        where.append(c.updated_at < f.updated_before)
    if f.status_code is not None:
        where.append(
            c.last_status_code.is_(None)
            if f.status_code == 0
            else c.last_status_code == f.status_code
        )
    if f.reason is not None:
        where.append(c.reason.is_(None) if f.reason == "" else c.reason == f.reason)
    return where


def in_flight(now: datetime) -> ColumnElement[bool]:
    """A worker holds a live lease: the call may be on the wire right now."""
    c = DELIVERIES.c
    return and_(c.state == State.PENDING.value, c.lease_token.is_not(None), c.next_attempt_at > now)


# -- reading ------------------------------------------------------------------------------------


def list_deliveries(
    conn: Connection, f: DeliveryFilter, *, limit: int, before_id: int | None
) -> Sequence[Row[Any]]:
    """Newest first, keyset on id, so a page costs the same however deep the cursor."""
    where = conditions(f)
    if before_id is not None:
        cursor: ColumnElement[Any] = DELIVERIES.c.id
        timed = f.updated_after is not None or f.updated_before is not None
        if timed and conn.dialect.name == "sqlite":
            # Under a time range the window comes off the (state, updated_at, ...) index and
            # is sorted; a plain ``id < ?`` made SQLite walk the state's id index instead, one
            # table read per row below the cursor (271 ms for the last page at 1,000,000
            # rows, against 0.2 ms). ``+id`` keeps the cursor out of the index choice.
            cursor = sqlite_unindexed(DELIVERIES.c.id)
        where.append(cursor < before_id)
    stmt = select(*LIST_COLUMNS).where(*where).order_by(DELIVERIES.c.id.desc()).limit(limit)
    return conn.execute(stmt).all()


def count_deliveries(conn: Connection, f: DeliveryFilter) -> int:
    stmt = select(func.count()).select_from(DELIVERIES).where(*conditions(f))
    return int(conn.execute(stmt).scalar_one())


#: The largest id a row can have (a signed 64-bit integer on both databases).
MAX_ID = 2**63 - 1


def get_delivery(conn: Connection, delivery_id: int) -> Row[Any] | None:
    if not 0 < delivery_id <= MAX_ID:  # the driver would fail on it (the CLI passes any int)
        return None
    return conn.execute(select(DELIVERIES).where(DELIVERIES.c.id == delivery_id)).first()


def get_call(conn: Connection, call_id: int) -> Row[Any] | None:
    return conn.execute(select(CALLS).where(CALLS.c.id == call_id)).first()


def attempts_of(conn: Connection, delivery_id: int) -> Sequence[Row[Any]]:
    """In the order they were made (numbers restart at 1 after a replay)."""
    stmt = select(ATTEMPTS).where(ATTEMPTS.c.delivery_id == delivery_id).order_by(ATTEMPTS.c.id)
    return conn.execute(stmt).all()


def list_rejected(
    conn: Connection,
    *,
    source: str | None,
    received_after: datetime | None,
    received_before: datetime | None,
    limit: int,
    before_id: int | None,
) -> Sequence[Row[Any]]:
    c = CALLS.c
    where: list[ColumnElement[bool]] = [c.status == CallStatus.REJECTED.value]
    if source is not None:
        where.append(c.source == source)
    if received_after is not None:
        where.append(c.received_at >= received_after)
    if received_before is not None:
        where.append(c.received_at < received_before)
    if before_id is not None:
        where.append(c.id < before_id)
    return conn.execute(select(CALLS).where(*where).order_by(c.id.desc()).limit(limit)).all()


# -- changing one -------------------------------------------------------------------------------


def _operator_values(change: OperatorReplay | Cancellation) -> dict[str, Any]:
    """The columns an operator's change sets; both end any (expired) lease."""
    now = change.updated_at
    common = {
        "state": change.state,
        "lease_token": None,
        "leased_by": None,
        "reason": change.reason,
        "updated_at": now,
    }
    if isinstance(change, Cancellation):
        return common | {"finished_at": now}
    # Due now with a fresh schedule: attempts and deferrals start again from zero.
    return common | {"attempts": 0, "deferrals": 0, "next_attempt_at": now, "finished_at": None}


def apply_one(conn: Connection, delivery_id: int, change: OperatorReplay | Cancellation) -> bool:
    """False when the row left the change's ``from_states`` or a worker leased it meanwhile."""
    result = conn.execute(
        update(DELIVERIES)
        .where(
            DELIVERIES.c.id == delivery_id,
            in_states(change.from_states),
            not_(in_flight(change.updated_at)),
        )
        .values(**_operator_values(change))
    )
    return bool(result.rowcount)


# -- changing many, in batches --------------------------------------------------------------------


def replay_batch(
    conn: Connection, f: DeliveryFilter, change: OperatorReplay, *, after_id: int, limit: int
) -> tuple[int, int, int | None]:
    """Replay the next ``limit`` matching rows after ``after_id``.

    Returns (rows matched, rows replayed, last id seen or None when there are no more).
    Rows in flight are matched but left alone.
    """
    ids = (
        conn.execute(
            select(DELIVERIES.c.id)
            .where(*conditions(f), DELIVERIES.c.id > after_id)
            .order_by(DELIVERIES.c.id)
            .limit(limit)
        )
        .scalars()
        .all()
    )
    if not ids:
        return 0, 0, None
    result = conn.execute(
        update(DELIVERIES)
        .where(
            DELIVERIES.c.id.in_(ids),
            *conditions(f),
            in_states(change.from_states),
            not_(in_flight(change.updated_at)),
        )
        .values(**_operator_values(change))
    )
    return len(ids), int(result.rowcount or 0), ids[-1]


def count_purgeable(conn: Connection, f: DeliveryFilter, cutoff: datetime) -> int:
    stmt = (
        select(func.count())
        .select_from(DELIVERIES)
        .where(*conditions(f), DELIVERIES.c.updated_at < cutoff)
    )
    return int(conn.execute(stmt).scalar_one())


def count_calls_orphaned_by(conn: Connection, f: DeliveryFilter, cutoff: datetime) -> int:
    """Inbound calls every one of whose deliveries the purge would delete."""
    d = DELIVERIES.c
    matched = (
        select(d.inbound_call_id.label("call_id"), func.count().label("n"))
        .where(*conditions(f), d.updated_at < cutoff, d.inbound_call_id.is_not(None))
        .group_by(d.inbound_call_id)
        .subquery()
    )
    total = (
        select(d.inbound_call_id.label("call_id"), func.count().label("n"))
        .where(d.inbound_call_id.in_(select(matched.c.call_id)))
        .group_by(d.inbound_call_id)
        .subquery()
    )
    stmt = (
        select(func.count())
        .select_from(matched.join(total, matched.c.call_id == total.c.call_id))
        .where(matched.c.n == total.c.n)
    )
    return int(conn.execute(stmt).scalar_one())


def _without_deliveries() -> ColumnElement[bool]:
    return ~exists().where(DELIVERIES.c.inbound_call_id == CALLS.c.id)


def count_standalone_calls(conn: Connection, cutoff: datetime) -> int:
    """Calls older than the cut with no delivery: rejected, duplicate, test, or emptied."""
    stmt = (
        select(func.count())
        .select_from(CALLS)
        .where(CALLS.c.received_at < cutoff, _without_deliveries())
    )
    return int(conn.execute(stmt).scalar_one())


def purge_batch(
    conn: Connection,
    f: DeliveryFilter,
    change: Purge,
    *,
    cutoff: datetime,
    after_id: int,
    limit: int,
) -> tuple[int, int, int | None]:
    """Delete the next ``limit`` matching deliveries (their attempts cascade) and the inbound
    calls they leave without any delivery.

    Returns (deliveries deleted, calls deleted, last id seen or None when there are no more).
    """
    rows = conn.execute(
        select(DELIVERIES.c.id, DELIVERIES.c.inbound_call_id)
        .where(
            *conditions(f),
            in_states(change.from_states),
            DELIVERIES.c.updated_at < cutoff,
            DELIVERIES.c.id > after_id,
        )
        .order_by(DELIVERIES.c.id)
        .limit(limit)
    ).all()
    if not rows:
        return 0, 0, None
    ids = [r.id for r in rows]
    call_ids = {r.inbound_call_id for r in rows if r.inbound_call_id is not None}
    # Attempts go explicitly too: it costs little and does not rely on the cascade.
    conn.execute(delete(ATTEMPTS).where(ATTEMPTS.c.delivery_id.in_(ids)))
    deleted = conn.execute(
        delete(DELIVERIES).where(
            DELIVERIES.c.id.in_(ids),
            *conditions(f),
            in_states(change.from_states),
            DELIVERIES.c.updated_at < cutoff,
        )
    ).rowcount
    calls = 0
    if call_ids:
        calls = conn.execute(
            delete(CALLS).where(CALLS.c.id.in_(call_ids), _without_deliveries())
        ).rowcount
    return int(deleted or 0), int(calls or 0), ids[-1]


def purge_standalone_calls_batch(conn: Connection, *, cutoff: datetime, limit: int) -> int:
    ids = (
        conn.execute(
            select(CALLS.c.id)
            .where(CALLS.c.received_at < cutoff, _without_deliveries())
            .order_by(CALLS.c.id)
            .limit(limit)
        )
        .scalars()
        .all()
    )
    if not ids:
        return 0
    result = conn.execute(delete(CALLS).where(CALLS.c.id.in_(ids), _without_deliveries()))
    return int(result.rowcount or 0)


# -- stats --------------------------------------------------------------------------------------


def paused_upstreams(conn: Connection) -> Sequence[Row[Any]]:
    us = UpstreamState
    stmt = select(us.upstream, us.reason, us.paused_at, us.probe_at).where(us.paused.is_(True))
    return cast("Sequence[Row[Any]]", conn.execute(stmt).all())


def heartbeats(conn: Connection) -> Sequence[Row[Any]]:
    hb = WorkerHeartbeat
    stmt = select(hb.worker_id, hb.hostname, hb.pid, hb.started_at, hb.beat_at).order_by(
        hb.beat_at.desc()
    )
    return cast("Sequence[Row[Any]]", conn.execute(stmt).all())


def resume_upstream(conn: Connection, upstream: str, now: datetime) -> bool:
    return system_repo.clear_paused(conn, upstream, now)


# -- the console: overview, failures grouped, per minute, a person --------------------------------


def finished_per_minute(
    conn: Connection, since: datetime, states: Sequence[str]
) -> list[tuple[str, str, datetime, int]]:
    """(upstream, state, minute, items) for items that reached ``states`` since ``since``;
    the (state, updated_at, upstream) index serves it without reading the table."""
    d = DELIVERIES.c
    minute: ColumnElement[Any]
    if conn.dialect.name == "sqlite":
        # Stored as 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC: the first 16 characters are the minute.
        minute = func.substr(d.updated_at, 1, 16)
    else:
        minute = func.date_trunc("minute", d.updated_at)
    stmt = (
        select(d.upstream, d.state, minute.label("minute"), func.count())
        .where(d.state.in_(states), d.updated_at >= since)
        .group_by(d.upstream, d.state, minute)
    )
    out = []
    for upstream, state, at, n in conn.execute(stmt):
        when = (
            datetime.fromisoformat(at).replace(tzinfo=UTC)
            if isinstance(at, str)
            else at.astimezone(UTC)
        )
        out.append((str(upstream), str(state), when, int(n)))
    return out


def count_rejected_calls(conn: Connection) -> int:
    stmt = (
        select(func.count()).select_from(CALLS).where(CALLS.c.status == CallStatus.REJECTED.value)
    )
    return int(conn.execute(stmt).scalar_one())


def failure_groups(
    conn: Connection, f: DeliveryFilter, *, limit: int, offset: int
) -> Sequence[Row[Any]]:
    """Failed and dead items grouped by upstream, last status code and reason, the group
    that failed most recently first."""
    d = DELIVERIES.c
    last_seen = func.max(d.updated_at)
    stmt = (
        select(
            d.upstream,
            d.last_status_code.label("status_code"),
            d.reason,
            func.count().label("items"),
            func.sum(case((d.state == State.DEAD.value, 1), else_=0)).label("dead"),
            func.min(d.updated_at).label("first_seen"),
            last_seen.label("last_seen"),
        )
        .where(*conditions(f))
        .group_by(d.upstream, d.last_status_code, d.reason)
        .order_by(last_seen.desc(), d.upstream, d.last_status_code, d.reason)
        .limit(limit)
        .offset(offset)
    )
    return conn.execute(stmt).all()


def counts_of_email(conn: Connection, email: str) -> list[tuple[str, str, int]]:
    d = DELIVERIES.c
    rows = conn.execute(
        select(d.direction, d.state, func.count())
        .where(d.email == email)
        .group_by(d.direction, d.state)
    )
    return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]


def identity_of(conn: Connection, email: str) -> Row[Any] | None:
    i = IDENTITIES.c
    stmt = select(i.email, i.clevertap_id, i.source, i.updated_at).where(i.email == email)
    return cast("Row[Any] | None", conn.execute(stmt).first())


def rejected_naming(
    conn: Connection, email: str, *, newest: int, limit: int
) -> tuple[Sequence[Row[Any]], int]:
    """Rejected calls whose body names ``email``, among the ``newest`` rejected calls (a body
    is not indexed by what it names, so the search is bounded); also how many were searched."""
    c = CALLS.c
    recent = (
        select(c.id)
        .where(c.status == CallStatus.REJECTED.value)
        .order_by(c.id.desc())
        .limit(newest)
        .subquery()
    )
    searched = int(conn.execute(select(func.count()).select_from(recent)).scalar_one())
    rows = conn.execute(
        select(CALLS)
        .where(
            c.id.in_(select(recent.c.id)),
            func.lower(c.body).contains(email.lower(), autoescape=True),
        )
        .order_by(c.id.desc())
        .limit(limit)
    ).all()
    return rows, searched
