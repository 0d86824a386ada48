"""SQL for process-wide state: generated secrets, heartbeats, upstream pauses, rate slots."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, bindparam, delete, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db import dialect_name
from app.fastsql import driver_cursor, sqlite_plan
from app.outbox import repository as outbox_repository
from app.outbox import transitions
from app.system.models import GeneratedSecret, RateSlot, UpstreamState, WorkerHeartbeat

Executor = Connection | Session


def _insert(conn: Executor, table: type) -> sqlite.Insert | postgresql.Insert:
    return postgresql.insert(table) if dialect_name(conn) == "postgresql" else sqlite.insert(table)


def get_or_create_secret(conn: Executor, name: str, candidate: str, now: datetime) -> str:
    """The stored secret ``name``; ``candidate`` is stored first if there is none.

    Insert-or-ignore then read, so replicas starting together agree on one value.
    """
    conn.execute(
        _insert(conn, GeneratedSecret)
        .values(name=name, value=candidate, created_at=now)
        .on_conflict_do_nothing(index_elements=["name"])
    )
    value = conn.execute(select(GeneratedSecret.value).where(GeneratedSecret.name == name))
    return str(value.scalar_one())


def beat(
    conn: Executor,
    *,
    worker_id: str,
    hostname: str,
    pid: int,
    started_at: datetime,
    now: datetime,
    pid_namespace: str | None = None,
) -> None:
    """Say ``worker_id`` is alive; a row taken away meanwhile (the worker was thought gone) is
    written again."""
    ins = _insert(conn, WorkerHeartbeat).values(
        worker_id=worker_id,
        hostname=hostname,
        pid=pid,
        pid_namespace=pid_namespace,
        started_at=started_at,
        beat_at=now,
    )
    conn.execute(ins.on_conflict_do_update(index_elements=["worker_id"], set_={"beat_at": now}))


def forget_worker(conn: Executor, worker_id: str) -> None:
    conn.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.worker_id == worker_id))


@dataclass(frozen=True, slots=True)
class Heartbeat:
    worker_id: str
    hostname: str
    pid: int
    pid_namespace: str | None
    started_at: datetime
    beat_at: datetime


def heartbeats(conn: Executor) -> list[Heartbeat]:
    hb = WorkerHeartbeat
    rows = conn.execute(
        select(hb.worker_id, hb.hostname, hb.pid, hb.pid_namespace, hb.started_at, hb.beat_at)
    )
    return [Heartbeat(*row) for row in rows]


def forget_gone_worker(conn: Executor, worker_id: str, beat_at: datetime) -> bool:
    """Remove a gone worker's row, unless it beat since it was read (then it is not gone);
    False when it beat or another worker removed it first."""
    result = conn.execute(
        delete(WorkerHeartbeat).where(
            WorkerHeartbeat.worker_id == worker_id, WorkerHeartbeat.beat_at == beat_at
        )
    )
    return bool(getattr(result, "rowcount", 0))


def latest_beat(conn: Executor) -> datetime | None:
    # The column's UTCDateTime type makes the result timezone-aware on every backend.
    value: datetime | None = conn.execute(select(func.max(WorkerHeartbeat.beat_at))).scalar()
    return value


def prune_heartbeats(conn: Executor, older_than: datetime) -> None:
    conn.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.beat_at < older_than))


@dataclass(frozen=True, slots=True)
class PauseState:
    upstream: str
    paused: bool
    reason: str | None
    paused_at: datetime | None
    probe_at: datetime | None
    key_fingerprint: str | None


_PAUSE_COLUMNS = (
    UpstreamState.upstream,
    UpstreamState.paused,
    UpstreamState.reason,
    UpstreamState.paused_at,
    UpstreamState.probe_at,
    UpstreamState.key_fingerprint,
)


def get_upstream_state(conn: Executor, upstream: str) -> PauseState | None:
    row = conn.execute(select(*_PAUSE_COLUMNS).where(UpstreamState.upstream == upstream)).first()
    return None if row is None else PauseState(*row)


def upstream_states(conn: Executor) -> dict[str, PauseState]:
    return {row[0]: PauseState(*row) for row in conn.execute(select(*_PAUSE_COLUMNS)).all()}


def set_paused(
    conn: Executor,
    upstream: str,
    *,
    reason: str,
    fingerprint: str | None,
    now: datetime,
    probe_in: float,
) -> None:
    values = {
        "paused": True,
        "reason": reason,
        "paused_at": now,
        "probe_at": now + timedelta(seconds=probe_in),
        "key_fingerprint": fingerprint,
        "updated_at": now,
    }
    ins = _insert(conn, UpstreamState).values(upstream=upstream, **values)
    conn.execute(
        ins.on_conflict_do_update(
            index_elements=["upstream"],
            # Keep the first pause time across probes so the operator sees how long it lasts.
            set_={**values, "paused_at": func.coalesce(UpstreamState.paused_at, now)},
        )
    )


def set_probe_at(conn: Executor, upstream: str, probe_at: datetime, now: datetime) -> None:
    conn.execute(
        update(UpstreamState)
        .where(UpstreamState.upstream == upstream)
        .values(probe_at=probe_at, updated_at=now)
    )


def clear_paused(conn: Executor, upstream: str, now: datetime) -> bool:
    """Lift a pause; the rows it held back become due at once, not after their deferral."""
    result = conn.execute(
        update(UpstreamState)
        .where(UpstreamState.upstream == upstream, UpstreamState.paused.is_(True))
        .values(paused=False, reason=None, paused_at=None, probe_at=None, updated_at=now)
    )
    lifted = bool(getattr(result, "rowcount", 0))
    if lifted:
        outbox_repository.resume_auth_deferred(conn, upstream, transitions.resume_deferred(now))
    return lifted


_RESERVE = (
    "UPDATE rate_slots SET next_at = "
    "CASE WHEN next_at > :now THEN next_at ELSE :now END + :interval "
    "WHERE name = :name RETURNING next_at"
)
#: The same for SQLite's driver cursor: runs in every worker round.
_RESERVE_SQLITE = (
    "UPDATE rate_slots SET next_at = CASE WHEN next_at > ?1 THEN next_at ELSE ?1 END + ?2 "
    "WHERE name = ?3 RETURNING next_at"
)


def reserve_rate_slot(conn: Executor, name: str, *, now: float, interval: float) -> float:
    """Reserve the next send time for ``name`` (epoch seconds), shared by every process.

    GCRA: the row holds the earliest free slot; each reservation takes
    ``max(slot, now)`` and moves the slot on by ``interval``. One statement, so it is atomic
    on SQLite (single writer) and PostgreSQL (row lock); the row is created the first time
    (insert-or-ignore, then the same statement again).
    """
    row = _reserve(conn, name, now, interval)
    if row is None:
        conn.execute(
            _insert(conn, RateSlot)
            .values(name=name, next_at=now)
            .on_conflict_do_nothing(index_elements=["name"])
        )
        row = _reserve(conn, name, now, interval)
        assert row is not None
    return row - interval


def _reserve(conn: Executor, name: str, now: float, interval: float) -> float | None:
    if isinstance(conn, Connection) and conn.dialect.name == "sqlite":
        cursor = driver_cursor(conn)
        try:
            found = cursor.execute(_RESERVE_SQLITE, (now, interval, name)).fetchone()
        finally:
            cursor.close()
        return None if found is None else float(found[0])
    value = conn.execute(
        text(_RESERVE), {"now": now, "interval": interval, "name": name}
    ).scalar_one_or_none()
    return None if value is None else float(value)


_PAUSED = select(UpstreamState.paused).where(UpstreamState.upstream == bindparam("upstream"))


def is_paused(conn: Executor, upstream: str) -> bool:
    """Whether ``upstream`` is paused: the one read of the pause a worker round makes."""
    if isinstance(conn, Connection) and conn.dialect.name == "sqlite":
        cursor = driver_cursor(conn)
        try:
            plan = sqlite_plan(conn.dialect, _PAUSED)
            found = cursor.execute(plan.sql, plan.args({"upstream": upstream})).fetchone()
        finally:
            cursor.close()
    else:
        found = conn.execute(_PAUSED, {"upstream": upstream}).first()
    return found is not None and bool(found[0])


def push_rate_slot(conn: Executor, name: str, *, not_before: float) -> None:
    """Nobody sends to ``name`` before ``not_before`` (an upstream said Retry-After)."""
    conn.execute(
        text("UPDATE rate_slots SET next_at = :nb WHERE name = :name AND next_at < :nb"),
        {"nb": not_before, "name": name},
    )


PROBE_ROW = "~write-probe"


def write_probe(conn: Executor, now: datetime) -> None:
    """A write that needs new pages at commit (an 8 KB row, inserted and deleted again):
    readiness uses it to see whether the database takes writes again after the ingest writer
    failed to commit. A row that fits in a page already there would pass on a full disk."""
    conn.execute(
        _insert(conn, UpstreamState)
        .values(upstream=PROBE_ROW, paused=False, reason="x" * 8192, updated_at=now)
        .on_conflict_do_nothing(index_elements=["upstream"])
    )
    conn.execute(text("DELETE FROM upstream_states WHERE upstream = :u"), {"u": PROBE_ROW})


def share_allowance(
    conn: Executor, name: str, *, now: float, interval: float, horizon: float
) -> tuple[int, float]:
    """How many calls the budget ``name`` (one call per ``interval``) allows now: its slots
    that start within ``horizon`` seconds; and where its clock stands. The row stays locked
    on PostgreSQL until the caller commits, so replicas share one budget; the caller then
    moves the clock on by what it used (``push_rate_slot``)."""
    conn.execute(
        _insert(conn, RateSlot)
        .values(name=name, next_at=now)
        .on_conflict_do_nothing(index_elements=["name"])
    )
    next_at = conn.execute(
        select(RateSlot.next_at).where(RateSlot.name == name).with_for_update()
    ).scalar_one()
    start = max(float(next_at), now)
    if start > now + horizon:
        return 0, start
    return int((now + horizon - start) // interval) + 1, start
