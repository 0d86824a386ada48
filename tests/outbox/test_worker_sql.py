"""The worker's prebuilt statements (app/outbox/worker_sql.py, app/fastsql.py's plans): what
they write is what SQLAlchemy would write, each row only under its lease, on SQLite (the
driver's cursor) and PostgreSQL (SQLAlchemy)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.fastsql import sqlite_plan
from app.outbox import repository, transitions, worker_sql
from app.outbox.models import Attempt, Delivery, Operation, State, Upstream
from app.outbox.policy import RetryPolicy
from app.outbox.repository import Claimed
from app.system import repository as system_repo
from app.upstream import AttemptOutcome, Outcome
from tests.factories import add_delivery

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
POLICY = RetryPolicy([1.0, 2.0])


def claim(db: Engine, limit: int, now: datetime = T0, worker: str = "w1") -> list[Claimed]:
    with db.begin() as conn:
        return worker_sql.claim_due(
            conn,
            upstream=Upstream.MAILMODO,
            limit=limit,
            now=now,
            lease_seconds=60,
            worker_id=worker,
        )


def test_the_claim_takes_due_rows_of_its_upstream_in_due_order(db: Engine) -> None:
    later = add_delivery(db, next_attempt_at=T0 - timedelta(seconds=1))
    first = add_delivery(db, next_attempt_at=T0 - timedelta(seconds=5))
    add_delivery(db, next_attempt_at=T0 + timedelta(seconds=1))  # not due yet
    add_delivery(db, operation=Operation.EVENT_UPLOAD, next_attempt_at=T0 - timedelta(seconds=9))
    add_delivery(db, state=State.FAILED, next_attempt_at=T0 - timedelta(seconds=9))

    [got] = claim(db, 1)
    assert got.id == first
    assert got.leased_until == T0 + timedelta(seconds=60)
    [second] = claim(db, 10)
    assert second.id == later
    assert claim(db, 10) == []  # the rest is leased, not due, or not ours
    with Session(db) as session:
        row = session.get(Delivery, later)
        assert row is not None
        assert (row.lease_token, row.leased_by) == (second.lease_token, "w1")
        assert row.next_attempt_at == T0 + timedelta(seconds=60)
        assert row.updated_at == T0


def test_finish_held_writes_only_under_the_lease(db: Engine) -> None:
    a, b = add_delivery(db, next_attempt_at=T0), add_delivery(db, next_attempt_at=T0)
    got = {c.id: c for c in claim(db, 2)}
    done = T0 + timedelta(seconds=2)
    ok = Outcome(AttemptOutcome.DELIVERED, 200, None, 12.5, ref="r-1")
    retry = Outcome(AttemptOutcome.RETRY, 503, "busy", 3.0)
    with db.begin() as conn:
        conn.execute(update(Delivery).where(Delivery.id == b).values(lease_token="another"))
        held = worker_sql.finish_held(
            conn,
            [
                (got[a], transitions.after_attempt(got[a], ok, done, POLICY)),
                (got[b], transitions.after_attempt(got[b], retry, done, POLICY)),
            ],
        )
    assert held == {a}
    with Session(db) as session:
        row_a, row_b = session.get(Delivery, a), session.get(Delivery, b)
        assert row_a is not None
        assert row_b is not None
        assert row_a.state == State.DELIVERED
        assert (row_a.attempts, row_a.upstream_ref, row_a.last_status_code) == (1, "r-1", 200)
        assert row_a.finished_at == done
        assert row_a.updated_at == done
        assert (row_a.lease_token, row_a.leased_by) == (None, None)
        # The lost row keeps its new owner's state.
        assert (row_b.state, row_b.attempts, row_b.lease_token) == (State.PENDING, 0, "another")
    with db.begin() as conn:
        assert worker_sql.finish_held(conn, []) == set()


def test_what_the_driver_cursor_writes_is_what_sqlalchemy_writes(db: Engine) -> None:
    """The same change through the prebuilt statement and through ``update_leased``: the
    stored values are identical, text for text (timestamps on SQLite are text)."""
    fast, slow = add_delivery(db, next_attempt_at=T0), add_delivery(db, next_attempt_at=T0)
    got = {c.id: c for c in claim(db, 2)}
    outcome = Outcome(AttemptOutcome.RETRY, 503, "busy", 3.0)
    when = T0 + timedelta(seconds=3)
    with db.begin() as conn:
        assert worker_sql.finish_held(
            conn, [(got[fast], transitions.after_attempt(got[fast], outcome, when, POLICY))]
        ) == {fast}
        change = transitions.after_attempt(got[slow], outcome, when, POLICY)
        assert repository.update_leased(conn, got[slow], change)
        rows = conn.execute(
            text(
                "SELECT state, attempts, deferrals, next_attempt_at, reason, finished_at,"
                " updated_at FROM deliveries WHERE id IN (:a, :b) ORDER BY id"
            ),
            {"a": fast, "b": slow},
        ).all()
    assert rows[0][:2] == ("pending", 1)
    # Jitter makes next_attempt_at differ between the two changes; its form must not.
    assert type(rows[0][3]) is type(rows[1][3])
    assert len(str(rows[0][3])) == len(str(rows[1][3]))
    assert rows[0][:3] + rows[0][4:] == rows[1][:3] + rows[1][4:]


def test_attempts_are_inserted_as_given(db: Engine) -> None:
    delivery_id = add_delivery(db)
    started = T0 - timedelta(milliseconds=12)
    values = {
        "delivery_id": delivery_id,
        "number": 1,
        "started_at": started,
        "duration_ms": 12.0,
        "status_code": 200,
        "outcome": "delivered",
        "error": None,
        "response_body": '{"success": true}',
        "worker_id": "w1",
    }
    with db.begin() as conn:
        worker_sql.add_attempts(conn, [values, values | {"number": 2, "status_code": 503}])
        worker_sql.add_attempts(conn, [])
    with Session(db) as session:
        rows = session.scalars(select(Attempt).order_by(Attempt.number)).all()
    assert [(r.number, r.status_code, r.started_at) for r in rows] == [
        (1, 200, started),
        (2, 503, started),
    ]


def test_the_pause_read(db: Engine) -> None:
    with db.begin() as conn:
        assert system_repo.is_paused(conn, "mailmodo") is False  # no row yet
        system_repo.set_paused(conn, "mailmodo", reason="401", fingerprint="f", now=T0, probe_in=60)
        assert system_repo.is_paused(conn, "mailmodo") is True
        assert system_repo.is_paused(conn, "mailmojo") is False
        assert system_repo.clear_paused(conn, "mailmodo", T0)
        assert system_repo.is_paused(conn, "mailmodo") is False


def test_sqlite_plans_are_compiled_once(db: Engine) -> None:
    if db.dialect.name != "sqlite":
        pytest.skip("PostgreSQL runs the same statements through SQLAlchemy's cache")
    add_delivery(db, next_attempt_at=T0)
    claim(db, 1)
    plan = sqlite_plan(db.dialect, worker_sql._CLAIM)
    assert sqlite_plan(db.dialect, worker_sql._CLAIM) is plan
    assert [name for name, _, _ in plan.binds].count("c_now") == 2
    # Literals of the statement keep their value; timestamps are bound as SQLite's text.
    args = plan.args(
        {
            "c_upstream": "mailmodo",
            "c_now": T0,
            "c_limit": 3,
            "c_token": "t",
            "c_worker": "w",
            "c_until": T0,
        }
    )
    assert "pending" in args
    assert "2026-03-01 12:00:00.123456" in args
