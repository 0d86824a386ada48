"""All SQL of the outbox: ingest in one transaction, claim with a lease, apply changes.

Functions take a ``Connection`` (or ``Session``) opened by the caller; they never commit.
The same statements run on SQLite (one writer at a time) and PostgreSQL, where the claim
uses ``FOR UPDATE SKIP LOCKED`` so that many worker processes never take the same row.
A delivery's state is only written here by applying a change of ``app.outbox.transitions``,
under its guard: the lease token for a worker's rows, the change's ``from_states`` otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, Connection, Table, TextClause, bindparam, select, text, update
from sqlalchemy.orm import Session

from app.db import dialect_name
from app.fastsql import insert_returning_ids, sqlite_query
from app.identity import repository as identity_repo
from app.outbox import ingest_dedup, notify, transitions
from app.outbox.models import (
    Attempt,
    CallStatus,
    Delivery,
    InboundCall,
    State,
    Upstream,
)
from app.outbox.schemas import Claimed, IngestRecord, IngestResult, NewDelivery
from app.outbox.transitions import (
    EDGES,
    Admission,
    AttemptChange,
    DeferralResume,
    Edge,
    LeaseRelease,
    ParkedExpiry,
    ParkedRelease,
)
from app.outbox.worker_sql import add_attempts, claim_due, finish_many, leased_values

__all__ = [
    "ATTEMPTS",
    "CALLS",
    "DELIVERIES",
    "Claimed",
    "Executor",
    "add_attempts",
    "claim_due",
    "finish_many",
]

Executor = Connection | Session
CALLS = cast(Table, InboundCall.__table__)
DELIVERIES = cast(Table, Delivery.__table__)
ATTEMPTS = cast(Table, Attempt.__table__)


def in_states(states: frozenset[State]) -> ColumnElement[bool]:
    """A change's state guard: ``state = ?`` for one state, ``state IN (...)`` for several.

    Bound, so no partial index (``state = 'parked'`` ...) can serve it: a statement meant for
    one writes its state literally (``_PARKED_BY_EMAIL``)."""
    if len(states) == 1:
        (only,) = states
        return DELIVERIES.c.state == only.value
    return DELIVERIES.c.state.in_(sorted(s.value for s in states))


def resolves_by_email(d: NewDelivery) -> bool:
    """An event without a CleverTap ID, which ``transitions.admit`` resolves by its email."""
    return d.identity_policy is not None and d.clevertap_id is None and bool(d.email)


def delivery_row(
    d: NewDelivery, a: Admission, inbound_call_id: int | None, now: datetime
) -> dict[str, Any]:
    """The ``deliveries`` row of a new delivery, in the state ``transitions.admit`` gave it
    (the ingest's rows and the ones a worker creates alike)."""
    return {
        "inbound_call_id": inbound_call_id,
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


def _call_row(
    record: IngestRecord, *, status: str, dedup_key: str | None, reason: str | None, item_count: int
) -> dict[str, Any]:
    return {
        "received_at": record.received_at,
        "source": record.source.value,
        "route": record.route,
        "target": record.target,
        "status": status,
        "http_status": record.http_status,
        "reason": reason,
        "dedup_key": dedup_key,
        "content_type": record.content_type,
        "body": record.body,
        "body_truncated": record.body_truncated,
        "item_count": item_count,
        "skipped_count": record.skipped,
        "request_id": record.request_id,
    }


# Statements of the ingest hot path are built once, not per batch: building one and computing
# its cache key costs more than running it.
assert EDGES[Edge.RELEASE_PARKED].from_states == {State.PARKED}
#: Parked rows by email, as the partial index ``ix_deliveries_parked_email`` is written: the
#: state a literal, never a parameter. With ``state = ?`` (or with no statistics to go by)
#: SQLite chose the index on (state, updated_at, upstream) instead and read every parked row
#: for every ingest batch: 10 ms a batch at 27,000 parked rows. SQLite is told the index
#: (``INDEXED BY``); PostgreSQL, with statistics, matches the literal to the partial index.
PARKED_BY_EMAIL = f"state = '{State.PARKED.value}'"
PARKED_INDEX = "ix_deliveries_parked_email"
_SQLITE_HINT = f" INDEXED BY {PARKED_INDEX}"
#: Values per expanding IN (…) list: far below PostgreSQL's 65,535 parameters per statement.
_IN_CHUNK = 1000


# Module constants only in the SQL text below; every value is a bound parameter.
def _parked_update(hint: str, clevertap_id: str, where: str) -> TextClause:
    """An UPDATE of parked rows to due (``release_parked``'s edge), ``hint`` after the table."""
    return text(
        f"UPDATE deliveries{hint} SET state = :b_state, clevertap_id = {clevertap_id}, "  # noqa: S608
        "next_attempt_at = :b_now, updated_at = :b_now, reason = :b_reason "
        f"WHERE {PARKED_BY_EMAIL} AND {where}"
    ).bindparams(
        bindparam("b_state", type_=DELIVERIES.c.state.type),
        bindparam("b_now", type_=DELIVERIES.c.updated_at.type),
    )


def _parked_emails(hint: str) -> TextClause:
    return text(
        f"SELECT DISTINCT email FROM deliveries{hint} "  # noqa: S608
        f"WHERE {PARKED_BY_EMAIL} AND email IN :emails"
    ).bindparams(bindparam("emails", expanding=True))


_IDENTITY_OF = "(SELECT clevertap_id FROM identities WHERE identities.email = deliveries.email)"
_HAS_IDENTITY = "EXISTS (SELECT 1 FROM identities WHERE identities.email = deliveries.email)"
#: By dialect: SQLite is told the index, PostgreSQL matches the literal state to it.
_RELEASE_PARKED = {
    d: _parked_update(hint, ":b_clevertap_id", "email = :b_email")
    for d, hint in (("sqlite", _SQLITE_HINT), ("postgresql", ""))
}
_RELEASE_RESOLVABLE = {
    d: _parked_update(hint, _IDENTITY_OF, _HAS_IDENTITY)
    for d, hint in (("sqlite", _SQLITE_HINT), ("postgresql", ""))
}
_PARKED_EMAILS = {
    d: _parked_emails(hint) for d, hint in (("sqlite", _SQLITE_HINT), ("postgresql", ""))
}


def _dialect(conn: Executor) -> str:
    """The key of the statements above: SQLite's, else PostgreSQL's."""
    return "sqlite" if dialect_name(conn) == "sqlite" else "postgresql"


# -- ingest -----------------------------------------------------------------------------------


def ingest_batch(
    conn: Connection,
    records: Sequence[IngestRecord],
    *,
    dedup_window_seconds: float,
    now: datetime,
) -> list[IngestResult]:
    """Store many inbound calls at once (group commit); duplicates inside the window are
    recorded as such and produce no deliveries.

    On PostgreSQL two replicas can race on the same new dedup key, both past the look-up: the
    calls are inserted with ``ON CONFLICT (dedup_key) DO NOTHING``, which waits for the other
    transaction, so the loser learns it lost in the same statement and records its call as a
    duplicate of the winner's, with no failed transaction and no retry.
    """
    fresh = ingest_dedup.fresh_dedup_keys(
        conn, records, now - timedelta(seconds=dedup_window_seconds)
    )
    sorted_ = ingest_dedup.sort_duplicates(records, fresh)
    results: list[IngestResult | None] = [None] * len(records)
    if sorted_.originals:
        _store_originals(conn, records, sorted_, results, now)
    if sorted_.dup_of_stored or sorted_.dup_of_batch:
        _store_duplicates(conn, records, sorted_, results)
    final = [r for r in results if r is not None]
    assert len(final) == len(records)
    if sorted_.originals:  # W13: wake idle workers on other processes at the commit
        notify.announce(
            conn,
            {d.upstream.value for i in sorted_.originals for d in records[i].deliveries},
        )
    return final


def _store_originals(
    conn: Connection,
    records: Sequence[IngestRecord],
    sorted_: ingest_dedup.Sorted,
    results: list[IngestResult | None],
    now: datetime,
) -> None:
    """Insert the calls, learn their identities (releasing parked events), admit and insert
    their deliveries; fills ``results`` for the originals. An original whose dedup key another
    replica committed meanwhile moves to the duplicates (PostgreSQL only)."""
    call_rows = [
        _call_row(
            records[i],
            status=records[i].status.value,
            dedup_key=records[i].dedup_key,
            reason=records[i].reason,
            item_count=len(records[i].deliveries),
        )
        for i in sorted_.originals
    ]
    if conn.dialect.name == "sqlite":  # one writer at a time: the look-up was the truth
        call_ids = insert_returning_ids(conn, CALLS, call_rows)
    else:
        call_ids = ingest_dedup.insert_calls_first_wins(conn, records, sorted_, call_rows)
    originals = sorted_.originals
    learnt = _learn_identities(conn, records, originals, now)
    wanted = {
        d.email
        for i in originals
        for d in records[i].deliveries
        if resolves_by_email(d) and d.email
    }
    known = identity_repo.resolve(conn, wanted, learnt)
    delivery_rows: list[dict[str, Any]] = []
    owners: list[int] = []
    admit = transitions.admit
    for i, call_id in zip(originals, call_ids, strict=True):
        for d in records[i].deliveries:
            owners.append(i)
            delivery_rows.append(delivery_row(d, admit(d, known, now), call_id, now))
    ids_by_record: dict[int, list[int]] = {i: [] for i in originals}
    if delivery_rows:
        delivery_ids = insert_returning_ids(conn, DELIVERIES, delivery_rows)
        for owner, delivery_id in zip(owners, delivery_ids, strict=True):
            ids_by_record[owner].append(delivery_id)
    for i, call_id in zip(originals, call_ids, strict=True):
        results[i] = IngestResult(
            call_id=call_id,
            duplicate=False,
            delivery_ids=ids_by_record[i],
            skipped=records[i].skipped,
        )


def _learn_identities(
    conn: Connection, records: Sequence[IngestRecord], originals: list[int], now: datetime
) -> dict[str, dict[str, Any]]:
    """Upsert the identities the calls carry (the last one per email wins) and release the
    events parked for them; returns the rows learnt, by email."""
    learnt: dict[str, dict[str, Any]] = {}
    for i in originals:
        for obs in records[i].identities:
            learnt[obs.email] = {
                "email": obs.email,
                "clevertap_id": obs.clevertap_id,
                "source": obs.source,
                "updated_at": now,
            }
    if learnt:
        # In email order: replicas upserting the same emails then lock them in the same order.
        rows = [learnt[email] for email in sorted(learnt)]
        identity_repo.upsert(conn, rows)
        release_parked(conn, rows, transitions.release_parked(now))
    return learnt


def _store_duplicates(
    conn: Connection,
    records: Sequence[IngestRecord],
    sorted_: ingest_dedup.Sorted,
    results: list[IngestResult | None],
) -> None:
    """One ``duplicate`` call row each (no body, no deliveries), answering with the
    original's deliveries; fills ``results`` for them."""
    dup_of_stored, dup_of_batch = sorted_.dup_of_stored, sorted_.dup_of_batch
    stored_ids = {call_id for call_id, _ in dup_of_stored.values()}
    delivery_ids_by_call: dict[int, list[int]] = {c: [] for c in stored_ids}
    if stored_ids:
        for delivery_id, owner_id in conn.execute(
            select(Delivery.id, Delivery.inbound_call_id)
            .where(Delivery.inbound_call_id.in_(stored_ids))
            .order_by(Delivery.id)
        ).all():
            if owner_id is not None:
                delivery_ids_by_call[owner_id].append(delivery_id)
    dup_rows: list[dict[str, Any]] = []
    for i in sorted([*dup_of_stored, *dup_of_batch]):
        if i in dup_of_stored:
            call_id, skipped = dup_of_stored[i]
            ids = delivery_ids_by_call[call_id]
        else:
            original = results[dup_of_batch[i]]
            assert original is not None
            call_id, skipped, ids = original.call_id, original.skipped, original.delivery_ids
        results[i] = IngestResult(
            call_id=call_id, duplicate=True, delivery_ids=ids, skipped=skipped
        )
        dup_rows.append(
            _call_row(
                records[i],
                status=CallStatus.DUPLICATE.value,
                dedup_key=None,
                reason=f"duplicate of call {call_id}",
                item_count=len(ids),
            )
            | {"body": ""}
        )
    conn.execute(CALLS.insert(), dup_rows)


# -- parked events ----------------------------------------------------------------------------


def release_parked(conn: Executor, identities: list[dict[str, Any]], change: ParkedRelease) -> None:
    """Events parked for want of a CleverTap ID become due, keyed by the ID just learnt.

    Almost always no row waits for these emails: one indexed look-up finds the few that do,
    and only those are updated (instead of one UPDATE per email learnt).
    """
    assert change.edge is Edge.RELEASE_PARKED
    emails = [r["email"] for r in identities]
    dialect = _dialect(conn)
    waiting: set[str] = set()
    for start in range(0, len(emails), _IN_CHUNK):
        chunk = emails[start : start + _IN_CHUNK]
        if dialect == "sqlite" and isinstance(conn, Connection):
            found = sqlite_query(conn, _PARKED_EMAILS[dialect], {"emails": chunk})
            waiting.update(row[0] for row in found)
        else:
            waiting.update(conn.execute(_PARKED_EMAILS[dialect], {"emails": chunk}).scalars())
    if not waiting:
        return
    conn.execute(
        _RELEASE_PARKED[dialect],
        [
            {
                "b_email": r["email"],
                "b_clevertap_id": r["clevertap_id"],
                "b_state": change.state,
                "b_reason": change.reason,
                "b_now": change.updated_at,
            }
            for r in identities
            if r["email"] in waiting
        ],
    )


def release_resolvable_parked(conn: Executor, change: ParkedRelease) -> int:
    """Parked rows whose email has an identity by now (closes the race between an event
    parked in one transaction and its identity learnt in a concurrent one).

    Run every maintenance tick under the write lock: it reads the parked rows' emails off
    their partial index and probes the identities for each, not every parked row from the
    table (``state = ?`` did, 11-16 ms a tick at 30,000 parked rows)."""
    assert change.from_states == {State.PARKED}
    values = {
        "b_state": change.state,
        "b_now": change.updated_at,
        "b_reason": change.reason,
    }
    result = conn.execute(_RELEASE_RESOLVABLE[_dialect(conn)], values)
    return int(getattr(result, "rowcount", 0) or 0)


def expire_parked(conn: Executor, change: ParkedExpiry) -> int:
    """Parked rows past their time (their due time is the end of parking) become dead.

    Every upstream is named so that ``ix_deliveries_due`` (upstream, state, next_attempt_at)
    finds the expired rows at once; by state alone SQLite read every parked row from the
    table each maintenance tick (8-13 ms at 30,000 parked rows), even with none expired."""
    result = conn.execute(
        update(DELIVERIES)
        .where(
            DELIVERIES.c.upstream.in_([u.value for u in Upstream]),
            in_states(change.from_states),
            DELIVERIES.c.next_attempt_at <= change.updated_at,
        )
        .values(
            state=change.state,
            finished_at=change.updated_at,
            updated_at=change.updated_at,
            reason=change.reason,
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


# -- claiming and finishing (the hot statements are in ``worker_sql``) ----------------------


def update_leased(conn: Executor, claimed: Claimed, change: AttemptChange | LeaseRelease) -> bool:
    """Apply a worker's change only while it still holds the lease; False means it was lost.

    The lease is the whole guard: a leased row is pending (see ``app.outbox.transitions``).
    """
    table = DELIVERIES
    result = conn.execute(
        update(table)
        .where(table.c.id == claimed.id, table.c.lease_token == claimed.lease_token)
        .values(**leased_values(change))
    )
    return bool(getattr(result, "rowcount", 0))


def add_attempt(conn: Executor, values: dict[str, Any]) -> None:
    conn.execute(ATTEMPTS.insert(), [values])


def has_waiting(conn: Executor, upstream: Upstream) -> bool:
    """Whether any item for ``upstream`` is waiting to be sent (pending or parked)."""
    row = conn.execute(
        select(DELIVERIES.c.id)
        .where(
            DELIVERIES.c.upstream == upstream.value,
            DELIVERIES.c.state.in_([State.PENDING.value, State.PARKED.value]),
        )
        .limit(1)
    ).first()
    return row is not None


def prune_delivered(conn: Executor, *, before: datetime, limit: int) -> int:
    """Delete up to ``limit`` delivered rows finished before ``before`` (attempts cascade)."""
    ids = (
        select(DELIVERIES.c.id)
        .where(DELIVERIES.c.state == State.DELIVERED.value, DELIVERIES.c.updated_at < before)
        .limit(limit)
    )
    doomed = [row[0] for row in conn.execute(ids).all()]
    if not doomed:
        return 0
    conn.execute(ATTEMPTS.delete().where(ATTEMPTS.c.delivery_id.in_(doomed)))
    conn.execute(DELIVERIES.delete().where(DELIVERIES.c.id.in_(doomed)))
    return len(doomed)


def prune_finished_calls(conn: Executor, *, before: datetime, limit: int) -> int:
    """Delete up to ``limit`` old inbound calls that have nothing left to explain: accepted,
    duplicate or test calls with no deliveries. Rejected calls stay until purged."""
    has_rows = select(DELIVERIES.c.id).where(DELIVERIES.c.inbound_call_id == CALLS.c.id)
    ids = (
        select(CALLS.c.id)
        .where(
            CALLS.c.received_at < before,
            CALLS.c.status.in_(
                [CallStatus.ACCEPTED.value, CallStatus.DUPLICATE.value, CallStatus.TEST.value]
            ),
            ~has_rows.exists(),
        )
        .limit(limit)
    )
    doomed = [row[0] for row in conn.execute(ids).all()]
    if doomed:
        conn.execute(CALLS.delete().where(CALLS.c.id.in_(doomed)))
    return len(doomed)


def resume_auth_deferred(conn: Executor, upstream: str, change: DeferralResume) -> int:
    """Rows held back because the upstream refused our credentials become due now."""
    now = change.updated_at
    result = conn.execute(
        update(DELIVERIES)
        .where(
            DELIVERIES.c.upstream == upstream,
            in_states(change.from_states),
            DELIVERIES.c.lease_token.is_(None),
            DELIVERIES.c.last_status_code.in_([401, 403]),
            DELIVERIES.c.next_attempt_at > now,
        )
        .values(next_attempt_at=now, updated_at=now)
    )
    return int(getattr(result, "rowcount", 0) or 0)
