"""Outbox SQL: claiming due rows under a lease, writing only under the lease, and many
concurrent claimers never sharing a row. Every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.clock import utcnow
from app.db import create_db_engine
from app.main import create_app
from app.outbox import repository, transitions
from app.outbox.models import Attempt, Delivery, State, Upstream
from app.outbox.policy import RetryPolicy
from app.outbox.repository import Claimed
from app.outbox.transitions import AttemptChange
from app.system.migrations import upgrade
from app.upstream import AttemptOutcome, Outcome
from tests.conftest import CT_AUTH, make_settings, profiles_body

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
LEASE = 300.0


def add_delivery(engine: Engine, **values: Any) -> int:
    row: dict[str, Any] = {
        "direction": "clevertap_to_mailmodo",
        "upstream": Upstream.MAILMODO.value,
        "operation": "campaign.trigger",
        "target": "camp-1",
        "email": "a@example.com",
        "clevertap_id": "ct-1",
        "payload": '{"email":"a@example.com"}',
        "state": State.PENDING.value,
        "attempts": 0,
        "deferrals": 0,
        "next_attempt_at": T0,
        "created_at": T0,
        "updated_at": T0,
    } | values
    with engine.begin() as conn:
        new_id: int = conn.execute(insert(Delivery).returning(Delivery.id), [row]).scalar_one()
    return new_id


def claim(engine: Engine, now: datetime, limit: int = 10, worker: str = "w1") -> list[Claimed]:
    with engine.begin() as conn:
        return repository.claim_due(
            conn,
            upstream=Upstream.MAILMODO,
            limit=limit,
            now=now,
            lease_seconds=LEASE,
            worker_id=worker,
        )


def row(engine: Engine, delivery_id: int) -> Delivery:
    with Session(engine) as session:
        found = session.get(Delivery, delivery_id)
        assert found is not None
        session.expunge(found)
        return found


# --- claiming -------------------------------------------------------------------------------


def test_claim_takes_only_due_pending_rows_of_the_upstream_in_due_order(db: Engine) -> None:
    late = add_delivery(db, next_attempt_at=T0 - timedelta(seconds=1), attempts=2, deferrals=1)
    early = add_delivery(db, next_attempt_at=T0 - timedelta(seconds=3), payload='{"x":1}')
    middle = add_delivery(db, next_attempt_at=T0 - timedelta(seconds=2))
    exactly_now = add_delivery(db, next_attempt_at=T0)
    add_delivery(db, next_attempt_at=T0 + timedelta(microseconds=1))  # not yet due
    for state in ("delivered", "failed", "dead", "parked", "dropped", "cancelled"):
        add_delivery(db, state=state, next_attempt_at=T0 - timedelta(hours=1))
    add_delivery(db, upstream=Upstream.CLEVERTAP.value, operation="event.upload")

    first = claim(db, T0, limit=2)
    assert [c.id for c in first] == sorted([early, middle])  # the two most overdue
    rest = claim(db, T0, limit=10)
    assert [c.id for c in rest] == sorted([late, exactly_now])
    assert claim(db, T0, limit=10) == []

    by_id = {c.id: c for c in [*first, *rest]}
    assert by_id[early].payload == '{"x":1}'
    assert (by_id[late].attempts, by_id[late].deferrals) == (2, 1)
    assert (by_id[late].target, by_id[late].email, by_id[late].clevertap_id) == (
        "camp-1",
        "a@example.com",
        "ct-1",
    )
    assert by_id[late].operation == "campaign.trigger"
    assert len({c.lease_token for c in first}) == 1
    assert {c.lease_token for c in first}.isdisjoint({c.lease_token for c in rest})


def test_claim_writes_a_lease(db: Engine) -> None:
    delivery_id = add_delivery(db)

    [claimed] = claim(db, T0, worker="worker-7")

    stored = row(db, delivery_id)
    assert stored.state == State.PENDING
    assert stored.lease_token == claimed.lease_token
    assert stored.leased_by == "worker-7"
    assert stored.next_attempt_at == T0 + timedelta(seconds=LEASE)
    assert stored.updated_at == T0
    assert stored.attempts == 0
    assert claimed.leased_until == T0 + timedelta(seconds=LEASE)


def test_claim_with_no_room_claims_nothing(db: Engine) -> None:
    add_delivery(db)
    assert claim(db, T0, limit=0) == []
    assert claim(db, T0, limit=-1) == []
    assert len(claim(db, T0, limit=1)) == 1


def test_crashed_claim_comes_back_only_after_the_lease(db: Engine) -> None:
    delivery_id = add_delivery(db)
    [crashed] = claim(db, T0, worker="crashed")  # ... and never writes anything back

    assert claim(db, T0 + timedelta(seconds=1), worker="other") == []
    assert claim(db, T0 + timedelta(seconds=LEASE - 0.001), worker="other") == []
    [again] = claim(db, T0 + timedelta(seconds=LEASE), worker="other")

    assert again.id == delivery_id
    assert again.lease_token != crashed.lease_token
    assert row(db, delivery_id).leased_by == "other"


def _attempt(claimed: Claimed, kind: AttemptOutcome, now: datetime, **kw: Any) -> AttemptChange:
    outcome = Outcome(kind, status_code=kw.pop("status_code", 200), duration_ms=1.0, **kw)
    return transitions.after_attempt(claimed, outcome, now, RetryPolicy([1]))


def test_writes_need_the_current_lease(db: Engine) -> None:
    delivery_id = add_delivery(db)
    [stale] = claim(db, T0, worker="stale")
    [current] = claim(db, T0 + timedelta(seconds=LEASE + 1), worker="current")
    later = T0 + timedelta(seconds=LEASE + 2)
    done = _attempt(current, AttemptOutcome.DELIVERED, later, reason=None, ref="ref-current")
    late = _attempt(stale, AttemptOutcome.FAILED, later, status_code=400, reason="late")

    with db.begin() as conn:
        assert repository.update_leased(conn, stale, late) is False
    assert row(db, delivery_id).state == State.PENDING
    assert row(db, delivery_id).leased_by == "current"

    with db.begin() as conn:
        assert repository.update_leased(conn, current, done) is True
    with db.begin() as conn:
        # The lease ends with the write: neither worker can write again.
        assert repository.update_leased(conn, current, late) is False
        assert repository.update_leased(conn, stale, late) is False
    stored = row(db, delivery_id)
    assert (stored.state, stored.upstream_ref, stored.lease_token) == (
        "delivered",
        "ref-current",
        None,
    )


def test_finish_many_applies_each_transition_under_its_own_lease(db: Engine) -> None:
    a, b = add_delivery(db), add_delivery(db)
    claimed = {c.id: c for c in claim(db, T0)}
    stale_b = claimed[b]
    assert claim(db, T0, worker="other") == []  # still leased
    later = T0 + timedelta(seconds=1)
    with db.begin() as conn:
        # b's lease is lost meanwhile (another worker took it after expiry).
        conn.execute(update(Delivery).where(Delivery.id == b).values(lease_token="someone-else"))
        written = repository.finish_many(
            conn,
            [
                (claimed[a], _attempt(claimed[a], AttemptOutcome.DELIVERED, later, reason=None)),
                (stale_b, _attempt(stale_b, AttemptOutcome.DELIVERED, later, reason=None)),
            ],
        )
    assert written == 1
    assert row(db, a).state == "delivered"
    assert row(db, b).state == "pending"
    assert repository.finish_many(db.connect(), []) == 0


def test_attempt_rows_are_kept(db: Engine) -> None:
    delivery_id = add_delivery(db)
    with db.begin() as conn:
        for n, status in enumerate([503, 429, 200], start=1):
            repository.add_attempt(
                conn,
                {
                    "delivery_id": delivery_id,
                    "number": n,
                    "started_at": T0 + timedelta(seconds=n),
                    "duration_ms": 12.5 * n,
                    "status_code": status,
                    "outcome": "retry",
                    "error": None,
                    "response_body": "x" * 2048,
                    "worker_id": "w1",
                },
            )
    with db.connect() as conn:
        rows = conn.execute(
            select(Attempt.number, Attempt.status_code, Attempt.duration_ms, Attempt.response_body)
            .where(Attempt.delivery_id == delivery_id)
            .order_by(Attempt.number)
        ).all()
    assert [(r.number, r.status_code, r.duration_ms) for r in rows] == [
        (1, 503, 12.5),
        (2, 429, 25.0),
        (3, 200, 37.5),
    ]
    assert all(len(r.response_body) == 2048 for r in rows)


# --- many claimers at once ------------------------------------------------------------------


async def test_concurrent_claimers_never_get_the_same_row(database_url: str) -> None:
    """200 deliveries created through the app, then 8 threads claiming in small batches, each
    in its own transactions: every row is claimed exactly once."""
    settings = make_settings(database_url)
    engine = create_db_engine(settings)
    upgrade(settings, engine)
    try:
        ids: list[int] = []
        app = create_app(settings)
        async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bridge.test") as c:
                for chunk in range(4):
                    emails = [f"user{chunk}-{i}@example.com" for i in range(50)]
                    resp = await c.post(
                        "/clevertap/campaigns/camp-1", json=profiles_body(*emails), headers=CT_AUTH
                    )
                    assert resp.status_code == 200, resp.text
                    ids.extend(resp.json()["ids"])
        assert len(set(ids)) == 200

        claims = await asyncio.to_thread(claim_concurrently, engine, threads=8, batch=7)

        claimed_ids = [c.id for _worker, batch in claims for c in batch]
        assert len(claimed_ids) == len(set(claimed_ids)), "a row was claimed twice"
        assert sorted(claimed_ids) == sorted(ids)
        assert all(len(batch) <= 7 for _worker, batch in claims)
        # The database agrees with what each worker was handed.
        owner = {c.id: (worker, c.lease_token) for worker, batch in claims for c in batch}
        with engine.connect() as conn:
            stored = conn.execute(
                select(Delivery.id, Delivery.leased_by, Delivery.lease_token)
            ).all()
        assert {r.id: (r.leased_by, r.lease_token) for r in stored} == owner
    finally:
        engine.dispose()


def claim_concurrently(
    engine: Engine, *, threads: int, batch: int
) -> list[tuple[str, list[Claimed]]]:
    results: list[tuple[str, list[Claimed]]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def due_left() -> int:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(Delivery)
                    .where(Delivery.state == "pending", Delivery.next_attempt_at <= utcnow())
                ).scalar_one()
            )

    def worker(name: str) -> None:
        try:
            start.wait()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with engine.begin() as conn:
                    got = repository.claim_due(
                        conn,
                        upstream=Upstream.MAILMODO,
                        limit=batch,
                        now=utcnow(),
                        lease_seconds=LEASE,
                        worker_id=name,
                    )
                if got:
                    with lock:
                        results.append((name, got))
                elif due_left() == 0:
                    return
                else:
                    time.sleep(0.001)  # the rest is locked by others right now
        except BaseException as exc:  # pragma: no cover - reported by the caller
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(60)
    assert errors == []
    return results
