"""All SQL on the consent tables: the read slots, the state learnt and told per email, and the
consent log. Functions take the caller's connection and never commit."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.consent.models import ConsentLogEntry, ConsentState, StatusReadSlot
from app.fastsql import driver_cursor, sqlite_plan
from app.outbox.models import Delivery, Operation

Executor = Connection | Session
STATES = cast(Table, ConsentState.__table__)
LOG = cast(Table, ConsentLogEntry.__table__)
SLOTS = cast(Table, StatusReadSlot.__table__)


def _insert(conn: Executor, table: Table) -> sqlite.Insert | postgresql.Insert:
    dialect = conn.get_bind().dialect.name if isinstance(conn, Session) else conn.dialect.name
    return postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)


# -- read slots ------------------------------------------------------------------------------


def _book_slot_statement(dialect: str) -> Any:
    """The slot upsert with bound parameters, built once per dialect (it runs for every slot
    of every delivered send: building it per call cost more than running it)."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    ins = insert(SLOTS).values(
        email=bindparam("b_email"),
        slot_seconds=bindparam("b_slot"),
        due_at=bindparam("b_due"),
        delivery_id=None,
    )
    return ins.on_conflict_do_update(
        index_elements=[SLOTS.c.email, SLOTS.c.slot_seconds],
        set_={"due_at": ins.excluded.due_at, "delivery_id": None},
        where=SLOTS.c.due_at <= bindparam("b_now"),
    ).returning(SLOTS.c.email)


_BOOK_SLOT = {name: _book_slot_statement(name) for name in ("postgresql", "sqlite")}


def book_slots(
    conn: Executor, wanted: Sequence[tuple[str, int, datetime]], now: datetime
) -> list[tuple[str, int]]:
    """Book a read per (email, slot, due time) unless that email's read in that slot is still
    ahead; returns the (email, slot) pairs booked, which need a read delivery.

    One upsert per pair whose update only applies when the slot's read is due or past, so
    two workers finishing sends to one contact at once book one read, not two.
    """
    dialect = conn.get_bind().dialect.name if isinstance(conn, Session) else conn.dialect.name
    stmt = _BOOK_SLOT["postgresql" if dialect == "postgresql" else "sqlite"]
    booked: list[tuple[str, int]] = []
    if isinstance(conn, Connection) and dialect == "sqlite":
        # Every delivered send books its reads: on the driver's cursor (fastsql), one
        # prepared upsert per slot instead of one SQLAlchemy execution (~100 µs) each.
        plan = sqlite_plan(conn.dialect, stmt)
        cursor = driver_cursor(conn)
        try:
            for email, slot, due in wanted:
                args = plan.args({"b_email": email, "b_slot": slot, "b_due": due, "b_now": now})
                if cursor.execute(plan.sql, args).fetchone() is not None:
                    booked.append((email, slot))
        finally:
            cursor.close()
        return booked
    for email, slot, due in wanted:
        params = {"b_email": email, "b_slot": slot, "b_due": due, "b_now": now}
        if conn.execute(stmt, params).first() is not None:
            booked.append((email, slot))
    return booked


def set_slot_deliveries(conn: Executor, rows: Sequence[tuple[str, int, int]]) -> None:
    """Remember which delivery reads each booked slot (for the operator)."""
    if not rows:
        return
    params = [{"b_email": e, "b_slot": s, "b_id": i} for e, s, i in rows]
    if isinstance(conn, Connection) and conn.dialect.name == "sqlite":
        plan = sqlite_plan(conn.dialect, _SET_SLOT_DELIVERY)
        cursor = driver_cursor(conn)
        try:
            cursor.executemany(plan.sql, [plan.args(p) for p in params])
        finally:
            cursor.close()
        return
    conn.execute(_SET_SLOT_DELIVERY, params)


_SET_SLOT_DELIVERY = (
    update(SLOTS)
    .where(SLOTS.c.email == bindparam("b_email"), SLOTS.c.slot_seconds == bindparam("b_slot"))
    .values(delivery_id=bindparam("b_id"))
)


# -- state per email -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Known:
    """What the bridge knows about one email's consent (a ``consent_states`` row)."""

    email: str
    mailmodo_state: str | None
    mailmodo_reason: str | None
    mailmodo_at: datetime | None
    told_mailmodo: str | None
    told_mailmodo_at: datetime | None
    told_clevertap: str | None
    told_clevertap_at: datetime | None
    updated_at: datetime


def states_of(conn: Executor, emails: Iterable[str]) -> dict[str, Known]:
    wanted = sorted(set(emails))
    if not wanted:
        return {}
    rows = conn.execute(select(STATES).where(STATES.c.email.in_(wanted))).mappings()
    return {row["email"]: Known(**row) for row in rows}


def state_of(conn: Executor, email: str) -> Known | None:
    return states_of(conn, [email]).get(email)


def learn_mailmodo_state(
    conn: Executor, email: str, state: str, reason: str | None, now: datetime
) -> bool:
    """Keep ``state`` as the last one learnt from Mailmodo; True only if it changed (so each
    change is reported once, by whoever wins a race between two reads)."""
    ins = _insert(conn, STATES).values(
        email=email, mailmodo_state=state, mailmodo_reason=reason, mailmodo_at=now, updated_at=now
    )
    stmt = ins.on_conflict_do_update(
        index_elements=[STATES.c.email],
        set_={
            "mailmodo_state": ins.excluded.mailmodo_state,
            "mailmodo_reason": ins.excluded.mailmodo_reason,
            "mailmodo_at": ins.excluded.mailmodo_at,
            "updated_at": ins.excluded.updated_at,
        },
        where=STATES.c.mailmodo_state.is_distinct_from(ins.excluded.mailmodo_state),
    ).returning(STATES.c.email)
    return conn.execute(stmt).first() is not None


def mark_told(conn: Executor, email: str, now: datetime, **told: str | None) -> None:
    """Record what the bridge carried: ``told_mailmodo`` / ``told_clevertap`` (``None`` clears
    it), optionally ``mailmodo_state``; their ``*_at`` columns are set to ``now``."""
    values: dict[str, Any] = {"updated_at": now}
    for key, value in told.items():
        values[key] = value
        values[key.replace("_state", "") + "_at"] = now
    ins = _insert(conn, STATES).values(email=email, **values)
    conn.execute(
        ins.on_conflict_do_update(
            index_elements=[STATES.c.email], set_={k: ins.excluded[k] for k in values}
        )
    )


# -- the log ---------------------------------------------------------------------------------


def add_log(conn: Executor, rows: list[dict[str, Any]]) -> None:
    """Each row: email, at, state, source, reason, told, echo, delivery_id (channel email)."""
    if rows:
        conn.execute(LOG.insert(), [{"channel": "email"} | row for row in rows])


def logged_deliveries(conn: Executor, ids: Iterable[int]) -> set[int]:
    wanted = sorted(set(ids))
    if not wanted:
        return set()
    found = conn.execute(
        select(ConsentLogEntry.delivery_id).where(ConsentLogEntry.delivery_id.in_(wanted))
    ).scalars()
    return {i for i in found if i is not None}


def log_of(conn: Executor, email: str, limit: int = 200) -> list[dict[str, Any]]:
    """A person's consent log, newest first."""
    rows = conn.execute(
        select(LOG)
        .where(LOG.c.email == email)
        .order_by(LOG.c.at.desc(), LOG.c.id.desc())
        .limit(limit)
    ).mappings()
    return [dict(row) for row in rows]


def reads_of(conn: Executor, email: str, limit: int = 100) -> list[dict[str, Any]]:
    """A person's status reads (scheduled, done or failed), latest due first."""
    d = cast(Table, Delivery.__table__).c
    rows = conn.execute(
        select(d.id, d.state, d.target, d.clevertap_id, d.next_attempt_at, d.attempts, d.reason)
        .where(d.email == email, d.operation == Operation.CONTACT_STATUS.value)
        .order_by(d.next_attempt_at.desc(), d.id.desc())
        .limit(limit)
    ).mappings()
    return [dict(row) for row in rows]
