"""All SQL of the outbox: ingest in one transaction, claim with a lease, finish under the lease.

Functions take a ``Connection`` (or ``Session``) opened by the caller; they never commit.
The same statements run on SQLite (one writer at a time) and PostgreSQL, where the claim
uses ``FOR UPDATE SKIP LOCKED`` so that many worker processes never take the same row.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any, cast

from sqlalchemy import Connection, Dialect, Table, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db import UTCDateTime, sqlite_utc_text
from app.identity.models import Identity
from app.outbox.models import (
    Attempt,
    CallStatus,
    Delivery,
    InboundCall,
    State,
    Upstream,
)
from app.outbox.schemas import IngestRecord, IngestResult, NewDelivery

Executor = Connection | Session
CALLS = cast(Table, InboundCall.__table__)
DELIVERIES = cast(Table, Delivery.__table__)
ATTEMPTS = cast(Table, Attempt.__table__)


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


def _identity_upsert(dialect: str) -> Any:
    ins = postgresql.insert(Identity) if dialect == "postgresql" else sqlite.insert(Identity)
    return ins.on_conflict_do_update(
        index_elements=[Identity.email],
        set_={
            "clevertap_id": ins.excluded.clevertap_id,
            "source": ins.excluded.source,
            "updated_at": ins.excluded.updated_at,
        },
        where=ins.excluded.updated_at >= Identity.updated_at,
    )


# Statements of the ingest hot path are built once, not per batch: building one and computing
# its cache key costs more than running it.
_IDENTITY_UPSERT = {name: _identity_upsert(name) for name in ("postgresql", "sqlite")}
_DEDUP_LOOKUP = select(
    InboundCall.id, InboundCall.dedup_key, InboundCall.received_at, InboundCall.skipped_count
).where(InboundCall.dedup_key.in_(bindparam("keys", expanding=True)))
_RELEASE_PARKED = (
    update(DELIVERIES)
    .where(
        DELIVERIES.c.state == State.PARKED.value,
        DELIVERIES.c.email == bindparam("b_email"),
    )
    .values(
        state=State.PENDING.value,
        clevertap_id=bindparam("b_clevertap_id"),
        next_attempt_at=bindparam("b_now", type_=DELIVERIES.c.next_attempt_at.type),
        updated_at=bindparam("b_now", type_=DELIVERIES.c.updated_at.type),
        reason=None,
    )
)


#: Values per expanding IN (…) list: far below PostgreSQL's 65,535 parameters per statement.
_IN_CHUNK = 1000
_PARKED_EMAILS = (
    select(DELIVERIES.c.email)
    .distinct()
    .where(
        DELIVERIES.c.state == State.PARKED.value,
        DELIVERIES.c.email.in_(bindparam("emails", expanding=True)),
    )
)


def _upsert_identities(conn: Executor, rows: list[dict[str, Any]]) -> None:
    dialect = conn.get_bind().dialect.name if isinstance(conn, Session) else conn.dialect.name
    if isinstance(conn, Connection) and dialect == "sqlite":
        plan = _row_insert(conn.dialect, IDENTITIES, tuple(rows[0]), _IDENTITY_UPSERT["sqlite"])
        converters = [(i, proc) for i, (_, proc) in enumerate(plan.columns) if proc is not None]
        values_of = itemgetter(*(name for name, _ in plan.columns))
        params = []
        for row in rows:
            values = list(values_of(row))
            for i, proc in converters:
                values[i] = proc(values[i])
            params.append(values)
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(plan.sql, params)
        finally:
            cursor.close()
        return
    conn.execute(_IDENTITY_UPSERT["postgresql" if dialect == "postgresql" else "sqlite"], rows)


_SQLITE_QUERIES: dict[tuple[int, int], Any] = {}


def _sqlite_time(text: str) -> datetime:
    """A timestamp as SQLite holds it (naive UTC text), tolerating hand-written forms."""
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _sqlite_query(
    conn: Connection, statement: Any, params: dict[str, Any]
) -> list[tuple[Any, ...]]:
    """Run a SELECT of this module on the driver's cursor, with its SQL compiled once.

    An execution through SQLAlchemy costs ~100 µs, more than the query itself, and the ingest
    hot path runs a few per commit. Expanding ``IN`` lists get one ``?`` per value; values
    and results are what SQLite stores (text timestamps), so only plain columns are used.
    """
    cache_key = (id(conn.dialect), id(statement))
    compiled = _SQLITE_QUERIES.get(cache_key)
    if compiled is None:
        compiled = _SQLITE_QUERIES[cache_key] = statement.compile(dialect=conn.dialect)
    sql: str = compiled.string
    args: list[Any] = []
    for name in compiled.positiontup:
        value = params[name] if name in params else compiled.params[name]
        marker = f"__[POSTCOMPILE_{name}]"
        if marker in sql:
            sql = sql.replace(marker, ",".join("?" * len(value)))
            args.extend(value)
        else:
            args.append(value)
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        return list(cursor.execute(sql, args).fetchall())
    finally:
        cursor.close()


@dataclass(frozen=True, slots=True)
class _RowInsert:
    """One table's single-row INSERT for SQLite, compiled once: SQL and each value's converter."""

    sql: str
    columns: tuple[tuple[str, Callable[[Any], Any] | None], ...]


_ROW_INSERTS: dict[tuple[int, int, str, tuple[str, ...]], _RowInsert] = {}
IDENTITIES = cast(Table, Identity.__table__)


def _row_insert(
    dialect: Dialect, table: Table, keys: tuple[str, ...], statement: Any = None
) -> _RowInsert:
    """``statement`` defaults to the table's plain INSERT (an upsert may be given instead)."""
    cache_key = (id(dialect), id(statement), table.name, keys)
    plan = _ROW_INSERTS.get(cache_key)
    if plan is None:
        insert = table.insert() if statement is None else statement
        compiled = insert.compile(dialect=dialect, column_keys=list(keys))
        order = compiled.positiontup or []
        assert sorted(order) == sorted(keys), (order, keys)
        plan = _RowInsert(
            sql=compiled.string,
            columns=tuple(
                (
                    name,
                    sqlite_utc_text
                    if isinstance(table.c[name].type, UTCDateTime)
                    else table.c[name].type.dialect_impl(dialect).bind_processor(dialect),
                )
                for name in order
            ),
        )
        _ROW_INSERTS[cache_key] = plan
    return plan


def _insert_returning_ids(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> list[int]:
    """Insert ``rows`` (all with the same keys) and return their new ids, in row order.

    PostgreSQL gets one multi-row ``INSERT … RETURNING``. On SQLite, SQLAlchemy cannot match
    a multi-row ``RETURNING`` to its rows and runs one statement per row anyway, at a cost of
    ~100 µs each; here each row is one execution of the same prepared statement on the
    driver's cursor (same transaction, same SQL, values converted by the columns' own types),
    and its id is the cursor's ``lastrowid``.
    """
    if conn.dialect.name != "sqlite":
        return list(
            conn.execute(table.insert().returning(table.c.id, sort_by_parameter_order=True), rows)
            .scalars()
            .all()
        )
    plan = _row_insert(conn.dialect, table, tuple(rows[0]))
    names = [name for name, _ in plan.columns]
    values_of = itemgetter(*names)
    converters = [(i, proc) for i, (_, proc) in enumerate(plan.columns) if proc is not None]
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    ids: list[int] = []
    try:
        for row in rows:
            values = list(values_of(row))
            for i, proc in converters:
                values[i] = proc(values[i])
            cursor.execute(plan.sql, values)
            ids.append(cursor.lastrowid)
    finally:
        cursor.close()
    return ids


def ingest_batch(
    conn: Connection,
    records: Sequence[IngestRecord],
    *,
    dedup_window_seconds: float,
    now: datetime,
) -> list[IngestResult]:
    """Store many inbound calls at once (group commit); duplicates inside the window are
    recorded as such and produce no deliveries.

    On PostgreSQL two replicas can race on the same new dedup key; the loser's transaction
    fails on the unique constraint and the writer retries it, when this SELECT sees the key.
    """
    keys = {r.dedup_key for r in records if r.dedup_key}
    fresh: dict[str, tuple[int, int]] = {}
    if keys:
        cutoff = now - timedelta(seconds=dedup_window_seconds)
        stale: list[int] = []
        rows: list[tuple[Any, ...]]
        if conn.dialect.name == "sqlite":
            rows = [
                (call_id, key, _sqlite_time(received_at), skipped)
                for call_id, key, received_at, skipped in _sqlite_query(
                    conn, _DEDUP_LOOKUP, {"keys": list(keys)}
                )
            ]
        else:
            rows = [tuple(row) for row in conn.execute(_DEDUP_LOOKUP, {"keys": list(keys)})]
        for call_id, key, received_at, skipped in rows:
            if key is None:
                continue
            if received_at >= cutoff:
                fresh[key] = (call_id, skipped)
            else:
                stale.append(call_id)
        if stale:
            # Past the window the key is free again: the old call keeps its row, not its key.
            conn.execute(
                update(InboundCall).where(InboundCall.id.in_(stale)).values(dedup_key=None)
            )

    first_in_batch: dict[str, int] = {}
    originals: list[int] = []  # indices of records that are inserted as themselves
    dup_of_batch: dict[int, int] = {}  # record index -> index of the original in this batch
    dup_of_stored: dict[int, tuple[int, int]] = {}  # record index -> (call id, skipped)
    for i, record in enumerate(records):
        key = record.dedup_key
        if key is not None and key in fresh:
            dup_of_stored[i] = fresh[key]
        elif key is not None and key in first_in_batch:
            dup_of_batch[i] = first_in_batch[key]
        else:
            originals.append(i)
            if key is not None:
                first_in_batch[key] = i

    results: list[IngestResult | None] = [None] * len(records)
    if originals:
        call_rows = [
            _call_row(
                records[i],
                status=records[i].status.value,
                dedup_key=records[i].dedup_key,
                reason=records[i].reason,
                item_count=len(records[i].deliveries),
            )
            for i in originals
        ]
        call_ids = _insert_returning_ids(conn, CALLS, call_rows)
        identities: dict[str, dict[str, Any]] = {}
        for i in originals:
            for obs in records[i].identities:
                identities[obs.email] = {
                    "email": obs.email,
                    "clevertap_id": obs.clevertap_id,
                    "source": obs.source,
                    "updated_at": now,
                }
        if identities:
            rows_ = list(identities.values())
            _upsert_identities(conn, rows_)
            release_parked(conn, rows_, now=now)
        known = _resolve_identities(conn, [records[i] for i in originals], identities)
        delivery_rows: list[dict[str, Any]] = []
        owners: list[int] = []
        for i, call_id in zip(originals, call_ids, strict=True):
            for d in records[i].deliveries:
                owners.append(i)
                state, clevertap_id, reason, due = _identity_outcome(d, known, now)
                delivery_rows.append(
                    {
                        "inbound_call_id": call_id,
                        "direction": d.direction.value,
                        "upstream": d.upstream.value,
                        "operation": d.operation.value,
                        "target": d.target,
                        "email": d.email,
                        "clevertap_id": clevertap_id,
                        "payload": d.payload,
                        "state": state.value,
                        "attempts": 0,
                        "deferrals": 0,
                        "next_attempt_at": due,
                        "reason": reason,
                        "created_at": now,
                        "updated_at": now,
                        "finished_at": now if state in (State.DROPPED, State.FAILED) else None,
                    }
                )
        ids_by_record: dict[int, list[int]] = {i: [] for i in originals}
        if delivery_rows:
            delivery_ids = _insert_returning_ids(conn, DELIVERIES, delivery_rows)
            for owner, delivery_id in zip(owners, delivery_ids, strict=True):
                ids_by_record[owner].append(delivery_id)
        for i, call_id in zip(originals, call_ids, strict=True):
            results[i] = IngestResult(
                call_id=call_id,
                duplicate=False,
                delivery_ids=ids_by_record[i],
                skipped=records[i].skipped,
            )

    if dup_of_stored or dup_of_batch:
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
        dup_indices: list[int] = []
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
            dup_indices.append(i)
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

    final = [r for r in results if r is not None]
    assert len(final) == len(records)
    return final


def _resolve_identities(
    conn: Executor, records: Sequence[IngestRecord], learnt: dict[str, dict[str, Any]]
) -> dict[str, str]:
    """CleverTap IDs for the emails of events that arrived without one."""
    wanted = {
        d.email
        for r in records
        for d in r.deliveries
        if d.identity_policy is not None and d.clevertap_id is None and d.email
    }
    if not wanted:
        return {}
    known = {e: row["clevertap_id"] for e, row in learnt.items() if e in wanted}
    missing = wanted - known.keys()
    if missing:
        for email, clevertap_id in conn.execute(
            select(Identity.email, Identity.clevertap_id).where(Identity.email.in_(missing))
        ).all():
            known[email] = clevertap_id
    return known


def _identity_outcome(
    d: NewDelivery, known: dict[str, str], now: datetime
) -> tuple[State, str | None, str | None, datetime]:
    """State, CleverTap ID, reason and due time of a new row (see ``NewDelivery``)."""
    due = d.next_attempt_at or now
    if d.identity_policy is None or d.clevertap_id is not None:
        return d.state, d.clevertap_id, d.reason, due
    if d.email and d.email in known:
        return State.PENDING, known[d.email], None, due
    if d.identity_policy == "email" and d.email:
        return State.PENDING, None, None, due
    if d.identity_policy == "drop" or not d.email:
        return (
            State.DROPPED,
            None,
            "no CleverTap ID is known for this email (BRIDGE_UNRESOLVED_IDENTITY=drop)",
            due,
        )
    until = d.park_until or now
    return (
        State.PARKED,
        None,
        f"waiting for a CleverTap ID for this email until {until.isoformat()}",
        until,
    )


def release_parked(conn: Executor, identities: list[dict[str, Any]], *, now: datetime) -> None:
    """Events parked for want of a CleverTap ID become due, keyed by the ID just learnt.

    Almost always no row waits for these emails: one indexed look-up finds the few that do,
    and only those are updated (instead of one UPDATE per email learnt).
    """
    emails = [r["email"] for r in identities]
    waiting: set[str] = set()
    for start in range(0, len(emails), _IN_CHUNK):
        chunk = emails[start : start + _IN_CHUNK]
        if isinstance(conn, Connection) and conn.dialect.name == "sqlite":
            waiting.update(row[0] for row in _sqlite_query(conn, _PARKED_EMAILS, {"emails": chunk}))
        else:
            waiting.update(conn.execute(_PARKED_EMAILS, {"emails": chunk}).scalars())
    if not waiting:
        return
    conn.execute(
        _RELEASE_PARKED,
        [
            {"b_email": r["email"], "b_clevertap_id": r["clevertap_id"], "b_now": now}
            for r in identities
            if r["email"] in waiting
        ],
    )


# --------------------------------------------------------------------------------------------
# Claiming and finishing


@dataclass(slots=True)
class Claimed:
    """A delivery leased to one worker; ``lease_token`` guards every later write."""

    id: int
    operation: str
    target: str | None
    email: str | None
    clevertap_id: str | None
    payload: str
    attempts: int
    deferrals: int
    lease_token: str
    #: After this the row may be claimed by another worker: never start a call this late.
    leased_until: datetime | None = None


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
    if limit <= 0:
        return []
    table = DELIVERIES
    due = (
        select(table.c.id)
        .where(
            table.c.upstream == upstream.value,
            table.c.state == State.PENDING.value,
            table.c.next_attempt_at <= now,
        )
        .order_by(table.c.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    token = uuid.uuid4().hex
    rows = conn.execute(
        update(table)
        .where(table.c.id.in_(due.scalar_subquery()))
        .values(
            lease_token=token,
            leased_by=worker_id,
            next_attempt_at=now + timedelta(seconds=lease_seconds),
            updated_at=now,
        )
        .returning(
            table.c.id,
            table.c.operation,
            table.c.target,
            table.c.email,
            table.c.clevertap_id,
            table.c.payload,
            table.c.attempts,
            table.c.deferrals,
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
            leased_until=now + timedelta(seconds=lease_seconds),
        )
        for r in rows
    ]
    claimed.sort(key=lambda c: c.id)
    return claimed


def update_leased(conn: Executor, claimed: Claimed, values: dict[str, Any]) -> bool:
    """Write a transition only while we still hold the lease; False means it was lost."""
    table = DELIVERIES
    result = conn.execute(
        update(table)
        .where(table.c.id == claimed.id, table.c.lease_token == claimed.lease_token)
        .values(**values)
    )
    return bool(getattr(result, "rowcount", 0))


def add_attempt(conn: Executor, values: dict[str, Any]) -> None:
    conn.execute(ATTEMPTS.insert(), [values])


def finish_many(conn: Executor, rows: Sequence[tuple[Claimed, dict[str, Any]]]) -> int:
    """Apply many transitions at once (an upload batch), each under its own lease."""
    if not rows:
        return 0
    params = []
    for claimed, values in rows:
        full = {
            "b_id": claimed.id,
            "b_token": claimed.lease_token,
            "state": values.get("state", State.PENDING.value),
            "attempts": values.get("attempts", claimed.attempts),
            "deferrals": values.get("deferrals", claimed.deferrals),
            "next_attempt_at": values.get("next_attempt_at", values["updated_at"]),
            "reason": values.get("reason"),
            "upstream_ref": values.get("upstream_ref"),
            "finished_at": values.get("finished_at"),
            "last_status_code": values.get("last_status_code"),
            "updated_at": values["updated_at"],
            "lease_token": None,
            "leased_by": None,
        }
        params.append(full)
    stmt = update(DELIVERIES).where(
        DELIVERIES.c.id == bindparam("b_id"), DELIVERIES.c.lease_token == bindparam("b_token")
    )
    result = conn.execute(stmt, params)
    return int(getattr(result, "rowcount", 0) or 0)


def add_attempts(conn: Executor, rows: list[dict[str, Any]]) -> None:
    if rows:
        conn.execute(ATTEMPTS.insert(), rows)


def release_resolvable_parked(conn: Executor, *, now: datetime) -> int:
    """Parked rows whose email has an identity by now (closes the race between an event
    parked in one transaction and its identity learnt in a concurrent one)."""
    ident = select(Identity.clevertap_id).where(Identity.email == DELIVERIES.c.email)
    result = conn.execute(
        update(DELIVERIES)
        .where(
            DELIVERIES.c.state == State.PARKED.value,
            DELIVERIES.c.email.in_(select(Identity.email)),
        )
        .values(
            state=State.PENDING.value,
            clevertap_id=ident.scalar_subquery(),
            next_attempt_at=now,
            updated_at=now,
            reason=None,
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


def expire_parked(conn: Executor, *, now: datetime, ttl_hours: float) -> int:
    """Parked rows past their time become dead, with the reason."""
    result = conn.execute(
        update(DELIVERIES)
        .where(DELIVERIES.c.state == State.PARKED.value, DELIVERIES.c.next_attempt_at <= now)
        .values(
            state=State.DEAD.value,
            finished_at=now,
            updated_at=now,
            reason=f"no CleverTap ID for this email arrived within {ttl_hours:g} h "
            "(BRIDGE_PARK_TTL_HOURS)",
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


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


def resume_auth_deferred(conn: Executor, upstream: str, *, now: datetime) -> int:
    """Rows held back because the upstream refused our credentials become due now."""
    result = conn.execute(
        update(DELIVERIES)
        .where(
            DELIVERIES.c.upstream == upstream,
            DELIVERIES.c.state == State.PENDING.value,
            DELIVERIES.c.lease_token.is_(None),
            DELIVERIES.c.last_status_code.in_([401, 403]),
            DELIVERIES.c.next_attempt_at > now,
        )
        .values(next_attempt_at=now, updated_at=now)
    )
    return int(getattr(result, "rowcount", 0) or 0)
