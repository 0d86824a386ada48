"""The rate limit shared by every worker through the database: slot spacing, hold-offs, and
waiting for a slot never costing an attempt. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import httpx
import pytest
import respx
from sqlalchemy import text
from sqlalchemy.engine import Engine

from app.clock import ManualClock
from app.outbox.models import State
from app.state import BridgeState
from app.system import repository as system_repo
from app.worker.delivery import MailmodoDeliverer
from app.worker.ratelimit import SharedRateLimiter, wait_until
from tests.factories import (
    add_deliveries,
    attempts_of,
    get_delivery,
)
from tests.worker.conftest import (
    DelivererFactory,
    any_call,
    mm_ok,
    mm_status,
    reset_rate_slots,
)


def slots_apart(slots: list[float], interval: float) -> bool:
    return all(b - a == pytest.approx(interval, abs=1e-6) for a, b in itertools.pairwise(slots))


# --- the shared clock -----------------------------------------------------------------------


async def test_reservations_are_spaced_across_limiters(db: Engine, clock: ManualClock) -> None:
    """Two workers (two limiters on one database) never get slots closer than 1/rate."""
    first = SharedRateLimiter(db, "mailmodo", 10.0)
    second = SharedRateLimiter(db, "mailmodo", 10.0)
    now = clock.freeze().timestamp()

    slots = [
        *await first.reserve(3),
        *await second.reserve(2),
        *await first.reserve(1),
        *await second.reserve(4),
    ]

    assert len(slots) == len(set(slots)) == 10
    assert slots == sorted(slots)
    assert slots_apart(slots, 0.1)
    assert slots[0] == pytest.approx(now)  # the first slot is "now" by the clock


def test_gcra_slot_arithmetic(db: Engine) -> None:
    """Each reservation takes max(slot, now) and moves the slot on; idle time is no credit."""
    with db.begin() as conn:
        assert system_repo.reserve_rate_slot(conn, "x", now=100.0, interval=0.2) == 100.0
        assert system_repo.reserve_rate_slot(conn, "x", now=100.05, interval=0.2) == (
            pytest.approx(100.2)
        )
        assert system_repo.reserve_rate_slot(conn, "x", now=100.1, interval=0.6) == (
            pytest.approx(100.4)
        )
        # After a pause the next call goes now, not a burst of the time that went unused.
        assert system_repo.reserve_rate_slot(conn, "x", now=500.0, interval=0.2) == 500.0
        # Another name has its own clock.
        assert system_repo.reserve_rate_slot(conn, "y", now=100.0, interval=0.2) == 100.0


def test_push_only_moves_the_slot_later(db: Engine) -> None:
    with db.begin() as conn:
        system_repo.reserve_rate_slot(conn, "x", now=100.0, interval=0.2)
        system_repo.push_rate_slot(conn, "x", not_before=150.0)
        system_repo.push_rate_slot(conn, "x", not_before=120.0)  # shorter: ignored
        assert system_repo.reserve_rate_slot(conn, "x", now=101.0, interval=0.2) == 150.0


async def test_hold_off_pushes_every_limiter(db: Engine, clock: ManualClock) -> None:
    throttled = SharedRateLimiter(db, "mailmodo", 100.0)
    other = SharedRateLimiter(db, "mailmodo", 100.0)
    now = clock.freeze().timestamp()
    await throttled.reserve(1)

    await throttled.hold_off(5)
    await throttled.hold_off(1)  # a shorter one later does not pull the slot back

    [slot] = await other.reserve(1)
    assert slot == pytest.approx(now + 5)
    [after] = await throttled.reserve(1)
    assert after == pytest.approx(slot + 0.01)


async def test_reserving_nothing_touches_nothing(db: Engine) -> None:
    assert await SharedRateLimiter(db, "mailmodo", 5.0).reserve(0) == []
    with db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM rate_slots")).scalar_one() == 0


def test_concurrent_reservations_never_share_a_slot(db: Engine) -> None:
    """Eight threads, each its own transactions, reserving at once."""
    interval = 0.01
    slots: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            start.wait()
            for _ in range(10):
                with db.begin() as conn:
                    slot = system_repo.reserve_rate_slot(
                        conn, "race", now=time.time(), interval=interval
                    )
                with lock:
                    slots.append(slot)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == []
    assert len(slots) == len(set(slots)) == 80
    ordered = sorted(slots)
    assert min(b - a for a, b in itertools.pairwise(ordered)) >= interval - 1e-6


# --- waiting --------------------------------------------------------------------------------


async def test_wait_until_past_slot_returns_at_once() -> None:
    began = time.monotonic()
    assert await wait_until(time.time() - 1) is True
    assert time.monotonic() - began < 0.5  # at once (a slow machine may stall a little)


async def test_wait_until_sleeps_until_the_slot() -> None:
    began = time.monotonic()
    assert await wait_until(time.time() + 0.1, asyncio.Event()) is True
    assert time.monotonic() - began >= 0.09


async def test_wait_until_gives_up_when_stopped() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stop.set)
    began = time.monotonic()
    assert await wait_until(time.time() + 30, stop) is False
    assert time.monotonic() - began < 1
    # Already stopped: not even a due slot is used.
    assert await wait_until(time.time() - 1, stop) is False


async def test_limiter_and_waiting_read_the_one_clock(db: Engine, clock: ManualClock) -> None:
    """Slots and waits are in the clock's time, not the machine's: a clock an hour ahead gets
    slots an hour ahead, and a slot due by that clock is not waited for."""
    clock.advance(3600)
    [slot] = await SharedRateLimiter(db, "mailmodo", 10.0).reserve(1)
    assert slot == pytest.approx(clock.epoch(), abs=1)
    assert slot > time.time() + 3590
    began = time.monotonic()
    assert await wait_until(slot, asyncio.Event()) is True
    assert time.monotonic() - began < 0.5  # at once (a slow machine may stall a little)


# --- through the deliverer ------------------------------------------------------------------


async def test_waiting_for_a_slot_uses_no_attempt(
    client: httpx.AsyncClient,
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
) -> None:
    [delivery_id] = add_deliveries(state.engine, "a@example.com")
    sent_at: list[float] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent_at.append(time.time())
        return mm_ok()

    any_call(mailmodo).mock(side_effect=record)
    await deliverer.limiter.reserve(1)
    held_from = time.time()
    await deliverer.limiter.hold_off(0.4)

    run = asyncio.create_task(deliverer.run_once(10))
    await asyncio.sleep(0.2)
    waiting = get_delivery(state.engine, delivery_id)
    assert waiting.state == State.PENDING
    assert waiting.leased_by == deliverer.worker_id
    assert (waiting.attempts, waiting.deferrals) == (0, 0)
    assert attempts_of(state.engine, delivery_id) == []
    assert sent_at == []

    stats = await run

    assert stats.outcomes == {"delivered": 1}
    assert sent_at[0] >= held_from + 0.4 - 0.01
    row = get_delivery(state.engine, delivery_id)
    assert (row.state, row.attempts, row.deferrals) == (State.DELIVERED, 1, 0)
    assert len(attempts_of(state.engine, delivery_id)) == 1


async def test_stop_while_waiting_for_a_slot_releases_unsent(
    client: httpx.AsyncClient,
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
) -> None:
    ids = add_deliveries(state.engine, "a@example.com", "b@example.com")
    route = any_call(mailmodo).mock(return_value=mm_ok())
    await deliverer.limiter.reserve(1)
    await deliverer.limiter.hold_off(30)
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.1, stop.set)

    stats = await deliverer.run_once(10, stop)

    assert (stats.claimed, stats.released, stats.outcomes) == (2, 2, {})
    assert route.call_count == 0
    for delivery_id in ids:
        row = get_delivery(state.engine, delivery_id)
        assert row.state == State.PENDING
        assert row.lease_token is None
        assert (row.attempts, row.deferrals) == (0, 0)
        assert attempts_of(state.engine, delivery_id) == []
    # Released rows are due again at once (once the hold-off is over).
    reset_rate_slots(state.engine)
    assert (await deliverer.run_once(10)).outcomes == {"delivered": 2}
    assert route.call_count == 2


async def test_429_retry_after_holds_off_other_workers(
    client: httpx.AsyncClient,
    state: BridgeState,
    make_deliverer: DelivererFactory,
    mailmodo: respx.MockRouter,
    clock: ManualClock,
) -> None:
    throttled = make_deliverer("worker-a")
    other = make_deliverer("worker-b")
    add_deliveries(state.engine, "a@example.com")
    any_call(mailmodo).mock(return_value=mm_status(429, headers={"Retry-After": "3"}))
    now = clock.freeze().timestamp()

    await throttled.run_once(10)

    [slot] = await other.limiter.reserve(1)
    assert slot == pytest.approx(now + 3)
