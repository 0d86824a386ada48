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

from app.consent.mapping import ConsentStatus
from app.consent.models import ConsentLogEntry, ConsentState, StatusReadSlot
from app.db import dialect_name
from app.fastsql import driver_cursor, sqlite_plan
from app.outbox.models import Delivery, InboundCall, Operation

Executor = Connection | Session
STATES = cast(Table, ConsentState.__table__)
LOG = cast(Table, ConsentLogEntry.__table__)
SLOTS = cast(Table, StatusReadSlot.__table__)
#: The state shown for a read that is booked in its slot and not yet due (no delivery yet).
SCHEDULED = "scheduled"


def _insert(conn: Executor, table: Table) -> sqlite.Insert | postgresql.Insert:
    dialect = dialect_name(conn)
    return postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)


# -- read slots ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlotBooking:
    """A read wanted for ``email`` in one slot after a delivered send (what its delivery will
    be made of when it falls due)."""

    email: str
    slot_seconds: int
    due_at: datetime
    send_delivery_id: int
    send_operation: str
    target: str | None
    clevertap_id: str | None
    sent_at: datetime


@dataclass(frozen=True, slots=True)
class DueSlot:
    """A booked slot whose read is due and not yet an outbox delivery."""

    email: str
    slot_seconds: int
    due_at: datetime
    send_delivery_id: int | None
    send_operation: str | None
    target: str | None
    clevertap_id: str | None
    sent_at: datetime | None


_BOOKED = (
    "due_at",
    "send_delivery_id",
    "send_operation",
    "target",
    "clevertap_id",
    "sent_at",
)


def _book_slot_statement(dialect: str) -> Any:
    """The slot upsert with bound parameters, built once per dialect (it runs for every slot
    of every delivered send: building it per call cost more than running it).

    It books the slot again only when the slot's read is due or past *and* already an
    outbox delivery: a read still ahead, or due but still only scheduled, stays as it is."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    ins = insert(SLOTS).values(
        email=bindparam("b_email"),
        slot_seconds=bindparam("b_slot"),
        delivery_id=None,
        **{name: bindparam(f"b_{name}") for name in _BOOKED},
    )
    return ins.on_conflict_do_update(
        index_elements=[SLOTS.c.email, SLOTS.c.slot_seconds],
        set_={"delivery_id": None, **{name: ins.excluded[name] for name in _BOOKED}},
        where=(SLOTS.c.due_at <= bindparam("b_now")) & SLOTS.c.delivery_id.is_not(None),
    )


_BOOK_SLOT = {name: _book_slot_statement(name) for name in ("postgresql", "sqlite")}


def book_slots(conn: Executor, wanted: Sequence[SlotBooking], now: datetime) -> None:
    """Book a read per slot unless that email's read in that slot is still ahead (or due and
    not yet taken up). One upsert per slot, all in one ``executemany``; the upsert's own
    condition decides, so two workers finishing sends to one contact at once book one read."""
    if not wanted:
        return
    dialect = dialect_name(conn)
    stmt = _BOOK_SLOT["postgresql" if dialect == "postgresql" else "sqlite"]
    params = [
        {
            "b_email": w.email,
            "b_slot": w.slot_seconds,
            "b_now": now,
            **{f"b_{name}": getattr(w, name) for name in _BOOKED},
        }
        for w in wanted
    ]
    if isinstance(conn, Connection) and dialect == "sqlite":
        # Every delivered send books its reads: on the driver's cursor (fastsql), one
        # prepared statement for all of them instead of one SQLAlchemy execution each.
        plan = sqlite_plan(conn.dialect, stmt)
        cursor = driver_cursor(conn)
        try:
            cursor.executemany(plan.sql, [plan.args(p) for p in params])
        finally:
            cursor.close()
        return
    conn.execute(stmt, params)


def due_slots(conn: Executor, now: datetime, limit: int) -> list[DueSlot]:
    """Up to ``limit`` booked slots whose read is due and not yet a delivery, oldest due
    first (on PostgreSQL locked, skipping slots another worker is taking up)."""
    if limit <= 0:
        return []
    c = SLOTS.c
    query = (
        select(c.email, c.slot_seconds, *(c[name] for name in _BOOKED))
        .where(c.delivery_id.is_(None), c.due_at <= now)
        .order_by(c.due_at)
        .limit(limit)
    )
    dialect = dialect_name(conn)
    if dialect == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return [DueSlot(*row) for row in conn.execute(query)]


def set_slot_deliveries(conn: Executor, rows: Sequence[tuple[str, int, int]]) -> None:
    """Remember which delivery reads each slot that fell due (for the operator)."""
    if not rows:
        return
    params = [{"b_email": e, "b_slot": s, "b_id": i} for e, s, i in rows]
    conn.execute(_SET_SLOT_DELIVERY, params)


_SET_SLOT_DELIVERY = (
    update(SLOTS)
    .where(SLOTS.c.email == bindparam("b_email"), SLOTS.c.slot_seconds == bindparam("b_slot"))
    .values(delivery_id=bindparam("b_id"))
)


#: Values per IN (…) list: far below SQLite's and PostgreSQL's parameter limits.
IN_CHUNK = 1000


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


def opted_in_since(conn: Executor, emails: Iterable[str], since: datetime) -> set[str]:
    """Those of ``emails`` that opted in again at or after ``since``: a resubscribe call was
    stored for them, or Mailmodo was found (or told) subscribed again. Asked in chunks: a call
    may name tens of thousands of recipients, past a statement's parameter limit."""
    wanted = sorted(set(emails))
    d = cast(Table, Delivery.__table__).c
    calls = cast(Table, InboundCall.__table__).c
    found: set[str] = set()
    for start in range(0, len(wanted), IN_CHUNK):
        chunk = wanted[start : start + IN_CHUNK]
        # By when the resubscribe call was received (as ``since`` is), not when its batch was
        # written: an opt-in received just before the opt-out, in the same batch, is not after.
        found.update(
            conn.execute(
                select(d.email)
                .join_from(Delivery, InboundCall, d.inbound_call_id == calls.id)
                .where(
                    d.email.in_(chunk),
                    d.operation == Operation.CONTACT_RESUBSCRIBE.value,
                    calls.received_at >= since,
                )
            ).scalars()
        )
        found.update(
            conn.execute(
                select(STATES.c.email).where(
                    STATES.c.email.in_(chunk),
                    STATES.c.mailmodo_state == ConsentStatus.SUBSCRIBED.value,
                    STATES.c.mailmodo_at >= since,
                )
            ).scalars()
        )
    return {e for e in found if e is not None}


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
    """A person's status reads, latest due first: those only scheduled (``id`` None, state
    ``scheduled``: a slot not yet due) and those made deliveries (pending, done or failed)."""
    d = cast(Table, Delivery.__table__).c
    rows = conn.execute(
        select(d.id, d.state, d.target, d.clevertap_id, d.next_attempt_at, d.attempts, d.reason)
        .where(d.email == email, d.operation == Operation.CONTACT_STATUS.value)
        .order_by(d.next_attempt_at.desc(), d.id.desc())
        .limit(limit)
    ).mappings()
    made = [dict(row) for row in rows]
    c = SLOTS.c
    scheduled = [
        {
            "id": None,
            "state": SCHEDULED,
            "target": target,
            "clevertap_id": clevertap_id,
            "next_attempt_at": due_at,
            "attempts": 0,
            "reason": None,
        }
        for target, clevertap_id, due_at in conn.execute(
            select(c.target, c.clevertap_id, c.due_at).where(
                c.email == email, c.delivery_id.is_(None)
            )
        )
    ]
    both = sorted(scheduled + made, key=lambda r: r["next_attempt_at"], reverse=True)
    return both[:limit]
