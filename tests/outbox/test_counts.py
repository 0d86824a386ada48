"""The counts snapshot (``app.outbox.counts``): fresh counts are reused, stale ones are served
at once while one recount runs in a thread, a failed count keeps the previous one; and, over
the real app on both databases, ``/metrics``, ``/admin/stats`` and the overview share it and
say how old it is."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from structlog.testing import capture_logs

from app.clock import ManualClock, utcnow
from app.db import create_db_engine
from app.main import create_app
from app.outbox.counts import (
    KEPT,
    NOT_COUNTED,
    CountsSnapshot,
    CountsUnavailable,
    OutboxCounts,
    count_outbox,
)
from app.outbox.models import Delivery, State, Upstream
from app.state import BridgeState
from app.system.migrations import upgrade
from tests.conftest import ADMIN_TOKEN, make_settings
from tests.factories import add_deliveries, add_parked, set_rows
from tests.test_metrics import value

MAX_AGE = 10.0


class FakeCount:
    """A count that says how often it ran (as its pending count), can be held at a gate,
    made to fail, and made to take ``takes`` seconds of ``clock``."""

    def __init__(self) -> None:
        self.calls = 0
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail: Exception | None = None
        self.threads: list[str] = []
        self.clock: ManualClock | None = None
        self.takes = 0.0

    def __call__(self) -> OutboxCounts:
        self.calls += 1
        self.threads.append(threading.current_thread().name)
        counted_at = utcnow()
        if self.clock is not None:
            self.clock.advance(self.takes)
        self.entered.set()
        assert self.gate.wait(10), "the test never opened the gate"
        if self.fail is not None:
            raise self.fail
        return OutboxCounts(
            counted_at=counted_at,
            by_upstream_state={(Upstream.MAILMODO, State.PENDING): self.calls},
            parked_emails=0,
            delivered_last_5_minutes=0,
            delivered_last_60_minutes=0,
        )


def pending(counts: OutboxCounts) -> int:
    return counts.by_upstream_state[Upstream.MAILMODO, State.PENDING]


def settle(snapshot: CountsSnapshot) -> None:
    """Wait for the count in flight, if any, to end."""
    deadline = time.monotonic() + 10
    while snapshot.refreshing:
        assert time.monotonic() < deadline, "the count never ended"
        time.sleep(0.005)


@pytest.fixture
def frozen(clock: ManualClock) -> ManualClock:
    clock.freeze()
    return clock


@pytest.fixture
def fake() -> FakeCount:
    return FakeCount()


@pytest.fixture
def snapshot(fake: FakeCount) -> Iterator[CountsSnapshot]:
    snap = CountsSnapshot(fake, MAX_AGE)
    yield snap
    fake.gate.set()
    snap.close(5)


# -- the snapshot ------------------------------------------------------------------------------


def test_the_first_count_starts_in_the_background_and_is_reused_while_fresh(
    frozen: ManualClock, fake: FakeCount, snapshot: CountsSnapshot
) -> None:
    fake.gate.clear()
    snapshot.start()
    assert fake.entered.wait(5)
    assert fake.threads == ["outbox-counts"]  # not the caller's thread
    assert snapshot.current is None
    fake.gate.set()
    first = snapshot.get()  # the only read that waits: there is nothing to answer with yet
    assert pending(first) == 1
    frozen.advance(MAX_AGE)
    assert snapshot.get() is first
    assert fake.calls == 1
    assert first.age_seconds(utcnow()) == MAX_AGE


def test_a_stale_snapshot_is_answered_at_once_while_one_recount_runs(
    frozen: ManualClock, fake: FakeCount, snapshot: CountsSnapshot
) -> None:
    snapshot.start()
    first = snapshot.get()
    fake.gate.clear()
    fake.entered.clear()
    frozen.advance(MAX_AGE + 1)

    started = time.perf_counter()
    assert snapshot.get() is first  # stale, answered as is: no wait for the count
    assert time.perf_counter() - started < 1
    assert fake.entered.wait(5)
    # Many readers meanwhile, from many threads: all answered with the old counts, and the
    # count in flight is the only one.
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: snapshot.get(), range(64)))
    assert all(a is first for a in answers)
    assert fake.calls == 2
    assert snapshot.refreshing

    fake.gate.set()
    settle(snapshot)
    second = snapshot.get()
    assert pending(second) == 2
    assert second.counted_at == utcnow()
    assert fake.calls == 2


def test_a_failed_recount_keeps_the_previous_counts_is_logged_once_and_retried_later(
    frozen: ManualClock, fake: FakeCount, snapshot: CountsSnapshot
) -> None:
    snapshot.start()
    first = snapshot.get()
    fake.fail = RuntimeError("database is locked")
    with capture_logs() as logs:
        frozen.advance(MAX_AGE + 1)
        assert snapshot.get() is first
        settle(snapshot)
        assert snapshot.error == "database is locked"
        # No retry before max age has passed since the failed try, however stale the counts.
        frozen.advance(MAX_AGE / 2)
        assert snapshot.get() is first
        assert fake.calls == 2
        frozen.advance(MAX_AGE / 2 + 1)
        assert snapshot.get() is first
        settle(snapshot)
        assert fake.calls == 3
    failed = [e for e in logs if e["event"] == KEPT]
    assert len(failed) == 1  # throttled: the second failure is left out
    assert failed[0]["log_level"] == "warning"
    assert failed[0]["error"] == "database is locked"
    assert failed[0]["counted_at"] == first.counted_at.isoformat()

    fake.fail = None
    frozen.advance(MAX_AGE + 1)
    assert snapshot.get() is first
    settle(snapshot)
    assert pending(snapshot.get()) == 4
    assert snapshot.error is None


def test_without_any_counts_a_failing_count_is_unavailable_and_the_next_read_retries(
    frozen: ManualClock, fake: FakeCount, snapshot: CountsSnapshot
) -> None:
    fake.fail = RuntimeError("connection refused")
    with capture_logs() as logs:
        snapshot.start()
        with pytest.raises(CountsUnavailable, match="connection refused"):
            snapshot.get()
    # once, whether the read waited for the start's count or, that one over, made its own
    assert [e["error"] for e in logs if e["event"] == NOT_COUNTED] == ["connection refused"]
    fake.fail = None
    calls = fake.calls
    assert pending(snapshot.get()) == calls + 1  # no wait for max age: there is nothing else


def test_max_age_zero_counts_on_every_read_in_the_readers_thread(fake: FakeCount) -> None:
    snapshot = CountsSnapshot(fake, 0)
    snapshot.start()
    assert fake.calls == 0
    assert [pending(snapshot.get()) for _ in range(3)] == [1, 2, 3]
    assert set(fake.threads) == {threading.current_thread().name}
    assert snapshot.current is None
    fake.fail = RuntimeError("no such table: deliveries")
    with pytest.raises(CountsUnavailable, match="no such table"):
        snapshot.get()


def test_a_count_slower_than_max_age_is_followed_by_a_pause_four_times_as_long(
    frozen: ManualClock, fake: FakeCount, snapshot: CountsSnapshot
) -> None:
    """So counting a huge outbox keeps the database busy a fifth of the time at most."""
    fake.clock, fake.takes = frozen, 3 * MAX_AGE
    snapshot.start()
    first = snapshot.get()
    frozen.advance(4 * 3 * MAX_AGE - 1)  # the counts are long stale, but the pause is not over
    assert snapshot.get() is first
    assert not snapshot.refreshing
    frozen.advance(2)
    assert snapshot.get() is first
    settle(snapshot)
    assert fake.calls == 2


def test_a_clock_stepped_back_makes_the_counts_stale(
    frozen: ManualClock, fake: FakeCount, snapshot: CountsSnapshot
) -> None:
    snapshot.start()
    first = snapshot.get()
    frozen.advance(-60)
    assert snapshot.get() is first
    settle(snapshot)
    assert fake.calls == 2


def test_close_waits_a_while_for_the_count_in_flight_and_starts_no_more(
    frozen: ManualClock, fake: FakeCount, snapshot: CountsSnapshot
) -> None:
    snapshot.start()
    first = snapshot.get()
    fake.gate.clear()
    frozen.advance(MAX_AGE + 1)
    snapshot.get()
    assert fake.entered.wait(5)
    started = time.perf_counter()
    snapshot.close(0.05)  # gives up waiting
    assert time.perf_counter() - started < 2
    fake.gate.set()
    snapshot.close(5)
    settle(snapshot)
    frozen.advance(MAX_AGE + 1)
    assert pending(snapshot.get()) == 2
    assert fake.calls == 2
    assert first is not snapshot.current


def test_closed_before_any_count_is_unavailable(fake: FakeCount) -> None:
    snapshot = CountsSnapshot(fake, MAX_AGE)
    snapshot.close(1)
    with pytest.raises(CountsUnavailable, match="stopping"):
        snapshot.get()
    assert fake.calls == 0


# -- what is counted ---------------------------------------------------------------------------


def test_count_outbox_counts_every_state_parked_emails_and_recent_deliveries(
    db: Engine, frozen: ManualClock
) -> None:
    now = utcnow()
    add_deliveries(db, "a@x.io", "b@x.io")
    done = add_deliveries(db, "c@x.io", "d@x.io", "e@x.io", state=State.DELIVERED)
    set_rows(db, done[:1], updated_at=now - timedelta(minutes=2))
    set_rows(db, done[1:2], updated_at=now - timedelta(minutes=30))
    set_rows(db, done[2:], updated_at=now - timedelta(hours=2))
    add_parked(db, "p@x.io", "p@x.io", "q@x.io")
    counts = count_outbox(db)
    with db.connect() as conn:
        truth = conn.execute(
            select(Delivery.upstream, Delivery.state, func.count()).group_by(
                Delivery.upstream, Delivery.state
            )
        ).all()
    assert {k: n for k, n in counts.by_upstream_state.items() if n} == {
        (Upstream(u), State(s)): n for u, s, n in truth
    }
    assert len(counts.by_upstream_state) == len(Upstream) * len(State)
    assert (counts.parked, counts.parked_emails) == (3, 2)
    assert (counts.delivered_last_5_minutes, counts.delivered_last_60_minutes) == (1, 2)
    assert counts.counted_at == now
    assert counts.seconds > 0


# -- over the real app -------------------------------------------------------------------------

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
async def running(
    database_url: str, clock: ManualClock
) -> AsyncIterator[tuple[BridgeState, httpx.AsyncClient]]:
    """The app at the default max age (10 s), on SQLite and on PostgreSQL."""
    settings = make_settings(database_url, counts_max_age_seconds=MAX_AGE)
    engine = create_db_engine(settings)
    upgrade(settings, engine)  # PostgreSQL is migrated apart, as `ctmm-bridge db upgrade` does
    engine.dispose()
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bridge.test") as c:
            yield app.state.bridge, c


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def test_metrics_stats_and_overview_share_the_snapshot_and_say_how_old_it_is(
    running: tuple[BridgeState, httpx.AsyncClient], clock: ManualClock
) -> None:
    app_state, client = running
    await until(lambda: app_state.counts.current is not None)  # counted at start-up
    stats = (await client.get("/admin/stats", headers=AUTH)).json()
    assert stats["totals"]["pending"] == 0
    assert 0 <= stats["counts_age_seconds"] < MAX_AGE
    first_counted_at = stats["counted_at"]

    add_deliveries(app_state.engine, "a@x.io", "b@x.io", "c@x.io")
    add_parked(app_state.engine, "p@x.io")
    # Fresh enough: answered from the snapshot, which does not have them yet.
    stats = (await client.get("/admin/stats", headers=AUTH)).json()
    assert stats["totals"]["pending"] == 0
    assert stats["counted_at"] == first_counted_at
    metrics = (await client.get("/metrics")).text
    assert value(metrics, "ctmm_bridge_outbox_items", upstream="mailmodo", state="pending") == 0
    assert 0 <= value(metrics, "ctmm_bridge_outbox_counts_age_seconds") < MAX_AGE
    # The oldest pending item is read live (one index look-up), not from the snapshot.
    assert stats["oldest_pending_age_seconds"] is not None

    clock.advance(MAX_AGE + 5)
    stale = (await client.get("/admin/stats", headers=AUTH)).json()
    assert stale["totals"]["pending"] == 0  # answered at once with what there was ...
    assert stale["counts_age_seconds"] >= MAX_AGE + 5
    assert stale["counted_at"] == first_counted_at
    await until(lambda: not app_state.counts.refreshing)  # ... while it recounted

    stats = (await client.get("/admin/stats", headers=AUTH)).json()
    assert stats["totals"]["pending"] == 3
    assert stats["parked"] == {"count": 1, "distinct_emails": 1}
    assert 0 <= stats["counts_age_seconds"] < MAX_AGE
    metrics = (await client.get("/metrics")).text
    assert value(metrics, "ctmm_bridge_outbox_items", upstream="mailmodo", state="pending") == 3
    assert value(metrics, "ctmm_bridge_parked_identities") == 1
    assert 0 <= value(metrics, "ctmm_bridge_outbox_counts_age_seconds") < MAX_AGE
    assert value(metrics, "ctmm_bridge_outbox_count_duration_seconds") > 0
    overview = (await client.get("/admin/overview", headers=AUTH)).json()
    assert overview["counted_at"] == stats["counted_at"]  # one snapshot for every reader
    [lane] = [lane for lane in overview["lanes"] if lane["upstream"] == "mailmodo"]
    assert (lane["received"], lane["states"]["pending"]) == (3, 3)
