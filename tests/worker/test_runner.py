"""The worker loop: delivering, heartbeats, the concurrency cap, the rate limit, graceful
shutdown, and the end-to-end promise (outages and 429 storms: delivered exactly once)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import httpx
import orjson
import pytest
import respx
from asgi_lifespan import LifespanManager
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.clock import ManualClock, utcnow
from app.config import Settings
from app.main import create_app
from app.outbox.models import State
from app.state import BridgeState
from app.system.models import WorkerHeartbeat
from app.worker import runner as runner_module
from app.worker.delivery import MailmodoDeliverer
from app.worker.runner import WorkerRunner
from tests.conftest import CT_AUTH, make_settings, profiles_body
from tests.factories import (
    add_deliveries,
    all_deliveries,
    attempts_of,
    get_delivery,
)
from tests.worker.conftest import (
    DelivererFactory,
    any_call,
    mm_ok,
    mm_status,
    post_campaign,
    wait_for,
)


@asynccontextmanager
async def running(
    state: BridgeState,
    deliverer: MailmodoDeliverer | None,
    *,
    settings: Settings | None = None,
    worker_id: str = "runner-1",
) -> AsyncIterator[tuple[WorkerRunner, asyncio.Event]]:
    """A ``WorkerRunner`` running as a task until the block ends (then stopped and awaited)."""
    runner = WorkerRunner(
        engine=state.engine,
        settings=settings or state.settings,
        mailmodo=deliverer,
        worker_id=worker_id,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        yield runner, stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def heartbeat(state: BridgeState, worker_id: str) -> WorkerHeartbeat | None:
    with Session(state.engine) as session:
        row = session.get(WorkerHeartbeat, worker_id)
        if row is not None:
            session.expunge(row)
        return row


def states(state: BridgeState) -> list[str]:
    return [row.state for row in all_deliveries(state.engine)]


def all_in(state: BridgeState, wanted: State) -> Callable[[], bool]:
    return lambda: all(s == wanted for s in states(state))


def reached(state: BridgeState, ids: list[int], column: str, n: int) -> Callable[[], bool]:
    """Every row has at least ``n`` attempts (or deferrals) recorded."""
    return lambda: all(getattr(get_delivery(state.engine, i), column) >= n for i in ids)


def assert_released_unsent(state: BridgeState, ids: list[int]) -> None:
    """Given back as it was: pending, unleased, due now, no attempt used or recorded."""
    now = datetime.now(UTC)
    for delivery_id in ids:
        row = get_delivery(state.engine, delivery_id)
        assert row.state == State.PENDING
        assert row.lease_token is None
        assert row.leased_by is None
        assert (row.attempts, row.deferrals) == (0, 0)
        assert row.next_attempt_at <= now
        assert attempts_of(state.engine, delivery_id) == []


async def test_runner_delivers_pending_rows_and_beats(
    client: httpx.AsyncClient,
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
) -> None:
    ids = add_deliveries(state.engine, *(f"u{i}@example.com" for i in range(4)))
    route = any_call(mailmodo).mock(return_value=mm_ok())

    async with running(state, deliverer) as (runner, _stop):
        await wait_for(all_in(state, State.DELIVERED))
        beat = heartbeat(state, "runner-1")
        assert beat is not None
        assert (datetime.now(UTC) - beat.beat_at).total_seconds() < 5
        first_beat = beat.beat_at
        # Work committed while the runner runs is picked up too.
        [late] = add_deliveries(state.engine, "late@example.com", target="camp-2")
        runner.wake_threadsafe()
        await wait_for(lambda: get_delivery(state.engine, late).state == State.DELIVERED)
        # It keeps beating.
        await wait_for(
            lambda: (b := heartbeat(state, "runner-1")) is not None and b.beat_at > first_beat
        )

    assert route.call_count == 5  # exactly once each
    for delivery_id in [*ids, late]:
        assert len(attempts_of(state.engine, delivery_id)) == 1
    # A stopped worker takes its heartbeat away.
    assert heartbeat(state, "runner-1") is None


async def test_runner_without_mailmodo_key_keeps_rows_waiting(
    client: httpx.AsyncClient,
    state: BridgeState,
    mailmodo: respx.MockRouter,
) -> None:
    ids = add_deliveries(state.engine, "a@example.com")
    route = any_call(mailmodo).mock(return_value=mm_ok())

    async with running(state, None):
        await wait_for(lambda: heartbeat(state, "runner-1") is not None)
        await asyncio.sleep(0.2)

    assert route.call_count == 0
    assert get_delivery(state.engine, ids[0]).state == State.PENDING


async def test_concurrency_cap_bounds_calls_in_flight(
    client: httpx.AsyncClient,
    state: BridgeState,
    make_deliverer: DelivererFactory,
    settings_for: Callable[..., Settings],
    mailmodo: respx.MockRouter,
) -> None:
    cap = 3
    add_deliveries(state.engine, *(f"u{i}@example.com" for i in range(9)))
    in_flight = 0
    most = 0

    async def slow_ok(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.1)
        in_flight -= 1
        return mm_ok()

    route = any_call(mailmodo).mock(side_effect=slow_ok)
    deliverer = make_deliverer(mailmodo_max_concurrency=cap)

    async with running(state, deliverer, settings=settings_for(mailmodo_max_concurrency=cap)):
        await wait_for(all_in(state, State.DELIVERED))

    assert route.call_count == 9
    assert most == cap


async def test_outcomes_that_no_claim_carries_share_one_commit_within_the_linger(
    client: httpx.AsyncClient,
    state: BridgeState,
    make_deliverer: DelivererFactory,
    settings_for: Callable[..., Settings],
    mailmodo: respx.MockRouter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing more is due after the first claim: the three answers, a few ms apart, are
    committed together once the first has waited the linger, not in a round each."""
    linger = 0.2
    monkeypatch.setattr(runner_module, "OUTCOME_LINGER_SECONDS", linger)
    ids = add_deliveries(state.engine, *(f"u{i}@example.com" for i in range(3)))
    answered: list[float] = []

    async def staggered(request: httpx.Request) -> httpx.Response:
        email = orjson.loads(request.content)["email"]
        await asyncio.sleep(0.01 + 0.006 * int(email[1]))
        answered.append(time.monotonic())
        return mm_ok()

    any_call(mailmodo).mock(side_effect=staggered)
    # The rate does not space these calls, and no poll comes to claim (and carry them).
    fast = {"mailmodo_rate_per_second": 1000.0, "worker_poll_seconds": 30.0}
    deliverer = make_deliverer(**fast)
    recorded: list[tuple[int, float]] = []
    record_and_claim = deliverer.record_and_claim

    def spy(*args: Any) -> Any:
        result = record_and_claim(*args)
        if args[0]:
            recorded.append((len(args[0]), time.monotonic()))
        return result

    deliverer.record_and_claim = spy  # type: ignore[method-assign,assignment]
    async with running(state, deliverer, settings=settings_for(**fast)):
        await wait_for(all_in(state, State.DELIVERED))

    assert [n for n, _ in recorded] == [3]  # one transaction for the three outcomes
    committed_at = recorded[0][1]
    assert committed_at - answered[0] >= linger * 0.9  # it waited for company ...
    assert committed_at - answered[0] < linger + 1.0  # ... but not much longer
    for delivery_id in ids:
        assert len(attempts_of(state.engine, delivery_id)) == 1


#: Rates and polls that do not space the calls, two in flight: rounds of two rows at most.
TWO_AT_A_TIME = {
    "mailmodo_rate_per_second": 1000.0,
    "worker_poll_seconds": 30.0,
    "mailmodo_max_concurrency": 2,
}


@asynccontextmanager
async def ingest_committing(runner: WorkerRunner, *, on: bool = True) -> AsyncIterator[None]:
    """Wake ``runner`` every 20 ms, as the ingest writer's commits do under load (``on``)."""

    async def commits() -> None:
        while on:
            runner.wake_threadsafe()
            await asyncio.sleep(0.02)

    task = asyncio.create_task(commits())
    try:
        yield
    finally:
        task.cancel()


def _round_times(deliverer: MailmodoDeliverer) -> list[float]:
    """When each of ``deliverer``'s rounds (a ``record_and_claim`` transaction) began."""
    began: list[float] = []
    record_and_claim = deliverer.record_and_claim

    def spy(*args: Any) -> Any:
        began.append(time.monotonic())
        return record_and_claim(*args)

    deliverer.record_and_claim = spy  # type: ignore[method-assign,assignment]
    return began


async def test_rounds_are_spaced_while_ingest_holds_the_write_lock(
    client: httpx.AsyncClient,
    state: BridgeState,
    make_deliverer: DelivererFactory,
    settings_for: Callable[..., Settings],
    mailmodo: respx.MockRouter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ingest commits keep waking the worker and another process was found holding the
    write lock just now, every time: a round starts at most every ``YIELD_SECONDS``, and
    everything is still delivered once."""
    gap = 0.15
    monkeypatch.setattr(runner_module, "YIELD_SECONDS", gap)
    monkeypatch.setattr(runner_module.db, "write_lock_contended_at", lambda _e: time.monotonic())
    ids = add_deliveries(state.engine, *(f"u{i}@example.com" for i in range(6)))
    route = any_call(mailmodo).mock(return_value=mm_ok())
    deliverer = make_deliverer("runner-1", **TWO_AT_A_TIME)
    began = _round_times(deliverer)

    settings = settings_for(**TWO_AT_A_TIME)
    async with (
        running(state, deliverer, settings=settings) as (runner, _stop),
        ingest_committing(runner),
    ):
        await wait_for(all_in(state, State.DELIVERED))

    assert route.call_count == 6
    assert len(began) >= 3  # two rows a round at most
    gaps = [b - a for a, b in pairwise(began)]
    assert min(gaps) >= gap - 0.03, gaps  # (a thread may start a moment late)
    for delivery_id in ids:
        assert len(attempts_of(state.engine, delivery_id)) == 1


async def test_rounds_keep_to_the_ingest_cpu_share_while_ingest_is_busy(
    client: httpx.AsyncClient,
    state: BridgeState,
    make_deliverer: DelivererFactory,
    settings_for: Callable[..., Settings],
    mailmodo: respx.MockRouter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each round (with the calls it sends) costs 20 ms of CPU here; at a share of 0.1 of a
    core the next round waits 200 ms, however short ``YIELD_SECONDS`` is. Nothing is lost."""
    monkeypatch.setattr(runner_module, "YIELD_SECONDS", 0.001)
    monkeypatch.setattr(runner_module.db, "write_lock_contended_at", lambda _e: time.monotonic())
    ids = add_deliveries(state.engine, *(f"u{i}@example.com" for i in range(6)))
    route = any_call(mailmodo).mock(return_value=mm_ok())
    deliverer = make_deliverer("runner-1", **TWO_AT_A_TIME)  # the runner's id: its leases
    began = _round_times(deliverer)

    settings = settings_for(**TWO_AT_A_TIME)
    async with (
        running(state, deliverer, settings=settings) as (runner, _stop),
        ingest_committing(runner),
    ):
        runner.cpu_clock = lambda: 0.02 * len(began)
        runner.cpu_share = 0.1
        await wait_for(all_in(state, State.DELIVERED))

    assert route.call_count == 6
    assert len(began) >= 3
    gaps = [b - a for a, b in pairwise(began)]
    assert min(gaps) >= 0.2 - 0.03, gaps
    assert max(gaps) < runner_module.YIELD_MAX_SECONDS, gaps
    for delivery_id in ids:
        assert len(attempts_of(state.engine, delivery_id)) == 1


@pytest.mark.parametrize(
    ("contended_ago", "ingest"),
    [(None, True), (1.0, True), (0.0, False)],
    ids=["lock-never-held-elsewhere", "held-longer-ago", "held-by-workers-only"],
)
async def test_rounds_are_not_spaced_unless_ingest_holds_the_write_lock(
    client: httpx.AsyncClient,
    state: BridgeState,
    make_deliverer: DelivererFactory,
    settings_for: Callable[..., Settings],
    mailmodo: respx.MockRouter,
    monkeypatch: pytest.MonkeyPatch,
    contended_ago: float | None,
    ingest: bool,
) -> None:
    """No contention within ``YIELD_WINDOW_SECONDS``, or contention but no ingest commits (a
    drain beside other workers): full speed (spaced, these rounds would take ten seconds)."""
    monkeypatch.setattr(runner_module, "YIELD_SECONDS", 5.0)
    monkeypatch.setattr(
        runner_module.db,
        "write_lock_contended_at",
        lambda _e: 0.0 if contended_ago is None else time.monotonic() - contended_ago,
    )
    add_deliveries(state.engine, *(f"u{i}@example.com" for i in range(6)))
    route = any_call(mailmodo).mock(return_value=mm_ok())
    deliverer = make_deliverer(**TWO_AT_A_TIME)
    began = _round_times(deliverer)

    start = time.monotonic()
    settings = settings_for(**TWO_AT_A_TIME)
    async with (
        running(state, deliverer, settings=settings) as (runner, _stop),
        ingest_committing(runner, on=ingest),
    ):
        await wait_for(all_in(state, State.DELIVERED))
    assert time.monotonic() - start < 4.0
    assert route.call_count == 6
    assert len(began) >= 3


async def test_rate_limit_spaces_calls_and_waiting_uses_no_attempt(
    client: httpx.AsyncClient,
    state: BridgeState,
    make_deliverer: DelivererFactory,
    settings_for: Callable[..., Settings],
    mailmodo: respx.MockRouter,
) -> None:
    rate = 20.0
    ids = add_deliveries(state.engine, *(f"u{i}@example.com" for i in range(8)))
    sent_at: list[float] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent_at.append(time.time())
        return mm_ok()

    any_call(mailmodo).mock(side_effect=record)
    deliverer = make_deliverer(mailmodo_rate_per_second=rate)

    async with running(state, deliverer, settings=settings_for(mailmodo_rate_per_second=rate)):
        await wait_for(all_in(state, State.DELIVERED))

    assert len(sent_at) == 8
    assert sent_at[-1] - sent_at[0] >= 7 / rate * 0.9
    # Slots are 1/rate apart; a call delayed by a busy machine can bunch with the next one,
    # but no window of two slots ever holds more than three calls.
    window = 2 / rate
    assert max(sum(1 for t in sent_at if s <= t < s + window) for s in sent_at) <= 3
    for delivery_id in ids:
        row = get_delivery(state.engine, delivery_id)
        assert (row.attempts, row.deferrals) == (1, 0)
        assert len(attempts_of(state.engine, delivery_id)) == 1


# --- graceful shutdown ----------------------------------------------------------------------


async def test_shutdown_releases_calls_still_in_flight_after_the_grace(
    client: httpx.AsyncClient,
    state: BridgeState,
    make_deliverer: DelivererFactory,
    mailmodo: respx.MockRouter,
) -> None:
    grace = state.settings.shutdown_grace_seconds
    ids = add_deliveries(state.engine, "a@example.com", "b@example.com", "c@example.com")

    started: list[str] = []

    async def hangs(request: httpx.Request) -> httpx.Response:
        started.append(orjson.loads(request.content)["email"])
        await asyncio.sleep(grace + 2)
        return mm_ok("too-late")

    route = any_call(mailmodo).mock(side_effect=hangs)
    first = make_deliverer("runner-1")

    async with running(state, first) as (_runner, stop):
        await wait_for(lambda: len(started) == 3)
        began = time.monotonic()
        stop.set()
    took = time.monotonic() - began

    assert grace * 0.9 <= took < grace + 1.5
    assert_released_unsent(state, ids)

    # Nothing lost: the next worker (a restart) delivers every row, once.
    route.side_effect = None
    route.return_value = mm_ok("after-restart")
    async with running(state, make_deliverer("runner-2"), worker_id="runner-2"):
        await wait_for(all_in(state, State.DELIVERED))
    for delivery_id in ids:
        row = get_delivery(state.engine, delivery_id)
        assert (row.attempts, row.upstream_ref) == (1, "after-restart")
        [attempt] = attempts_of(state.engine, delivery_id)
        assert attempt.worker_id == "runner-2"


async def test_shutdown_lets_quick_calls_in_flight_finish(
    client: httpx.AsyncClient,
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
) -> None:
    ids = add_deliveries(state.engine, "a@example.com", "b@example.com")

    started: list[str] = []

    async def quick(request: httpx.Request) -> httpx.Response:
        started.append(orjson.loads(request.content)["email"])
        await asyncio.sleep(0.3)
        return mm_ok("finished")

    any_call(mailmodo).mock(side_effect=quick)

    async with running(state, deliverer) as (_runner, stop):
        await wait_for(lambda: len(started) == 2)
        stop.set()

    for delivery_id in ids:
        row = get_delivery(state.engine, delivery_id)
        assert (row.state, row.upstream_ref, row.attempts) == (State.DELIVERED, "finished", 1)


async def test_rows_waiting_for_a_rate_slot_at_stop_are_released_unsent(
    client: httpx.AsyncClient,
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
) -> None:
    route = any_call(mailmodo).mock(return_value=mm_ok())
    await deliverer.limiter.reserve(1)
    await deliverer.limiter.hold_off(30)  # as after a 429 with Retry-After: 30
    ids = add_deliveries(state.engine, "a@example.com", "b@example.com", "c@example.com")

    async with running(state, deliverer) as (_runner, stop):
        await wait_for(
            lambda: all(get_delivery(state.engine, i).leased_by == deliverer.worker_id for i in ids)
        )
        began = time.monotonic()
        stop.set()
    took = time.monotonic() - began

    assert took < state.settings.shutdown_grace_seconds  # released at once, not after grace
    assert route.call_count == 0
    assert_released_unsent(state, ids)


# --- the end-to-end promise -----------------------------------------------------------------


def per_email(
    script: list[httpx.Response], then: Callable[[str], httpx.Response]
) -> tuple[Callable[[httpx.Request], httpx.Response], Counter[str]]:
    """A side effect answering each recipient with ``script`` in turn, then ``then``."""
    calls: Counter[str] = Counter()

    def answer(request: httpx.Request) -> httpx.Response:
        email = orjson.loads(request.content)["email"]
        calls[email] += 1
        n = calls[email]
        return script[n - 1] if n <= len(script) else then(email)

    return answer, calls


async def test_outage_then_recovery_delivers_exactly_once(
    client: httpx.AsyncClient,
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
    clock: ManualClock,
) -> None:
    emails = ["a@example.com", "b@example.com", "c@example.com"]
    ids = await post_campaign(client, *emails)
    answer, calls = per_email([mm_status(503), mm_status(503)], lambda email: mm_ok(f"ref-{email}"))
    any_call(mailmodo).mock(side_effect=answer)

    async with running(state, deliverer):
        for done in (1, 2):
            await wait_for(reached(state, ids, "attempts", done))
            clock.advance(10)  # past the backoff
        await wait_for(all_in(state, State.DELIVERED))
        # CleverTap retries the same call meanwhile: a duplicate, not forwarded again.
        again = await client.post(
            "/clevertap/campaigns/camp-1", json=profiles_body(*emails), headers=CT_AUTH
        )
        assert again.json()["duplicates"] == 3
        clock.advance(3600)
        await asyncio.sleep(0.2)

    assert calls == dict.fromkeys(emails, 3)
    assert len(all_deliveries(state.engine)) == 3
    for delivery_id, email in zip(ids, emails, strict=True):
        row = get_delivery(state.engine, delivery_id)
        assert (row.state, row.attempts, row.upstream_ref) == (
            State.DELIVERED,
            3,
            f"ref-{email}",
        )
        outcomes = [a.outcome for a in attempts_of(state.engine, delivery_id)]
        assert outcomes == ["retry", "retry", "delivered"]


async def test_answers_wait_in_memory_while_the_database_cannot_write_them(
    state: BridgeState,
    make_deliverer: DelivererFactory,
    settings_for: Callable[..., Settings],
    mailmodo: respx.MockRouter,
    clock: ManualClock,
) -> None:
    """The calls were made, then the database failed the rounds that were to write their
    answers: the answers are written once it is back, seconds later, and no call is made
    again (they used to be dropped: each row stayed leased for BRIDGE_LEASE_SECONDS, then
    was sent again). Their attempts carry the time the answers came, not the time of the
    write (the outage is a minute here: the clock moves 20 s per failed round)."""
    emails = [f"u{i}@example.com" for i in range(4)]
    ids = add_deliveries(state.engine, *emails)
    route = any_call(mailmodo).mock(return_value=mm_ok())
    fast = {"mailmodo_rate_per_second": 1000.0, "worker_poll_seconds": 30.0}
    deliverer = make_deliverer("runner-1", **fast)  # the runner's own id: its leases
    record_and_claim = deliverer.record_and_claim
    failed: list[int] = []

    first_failure: list[datetime] = []

    def flaky(*args: Any) -> Any:
        if args[0] and len(failed) < 3:  # answers to write: the database is gone, 3 times
            failed.append(len(args[0]))
            first_failure[:] = first_failure or [utcnow()]
            clock.advance(20)
            raise OperationalError("COMMIT", None, sqlite3.OperationalError("disk I/O error"))
        return record_and_claim(*args)

    deliverer.record_and_claim = flaky  # type: ignore[method-assign,assignment]
    began = time.monotonic()
    async with running(state, deliverer, settings=settings_for(**fast)):
        await wait_for(all_in(state, State.DELIVERED))
    assert time.monotonic() - began < 10  # not a lease (300 s) later
    assert len(failed) == 3
    assert route.call_count == len(emails)  # each call made once
    for delivery_id in ids:
        [attempt] = attempts_of(state.engine, delivery_id)
        assert attempt.outcome == "delivered"
        # answered before the outage's end (~60 s of clock later), by its first failed write
        assert attempt.started_at <= first_failure[0] + timedelta(seconds=20)
        row = get_delivery(state.engine, delivery_id)
        assert row.updated_at <= first_failure[0] + timedelta(seconds=20)


async def test_a_round_settled_with_an_error_forgets_the_time_its_answers_came(
    state: BridgeState,
    make_deliverer: DelivererFactory,
    settings_for: Callable[..., Settings],
    mailmodo: respx.MockRouter,
    clock: ManualClock,
) -> None:
    """An answer waits (the database away), then its write fails for good (a fault): the row
    comes back after its lease and is sent again; that later attempt is dated when it was
    made, not when the first answer came."""
    [row_id] = add_deliveries(state.engine, "a@example.com")
    any_call(mailmodo).mock(return_value=mm_ok())
    fast = {"mailmodo_rate_per_second": 1000.0, "worker_poll_seconds": 0.1}
    deliverer = make_deliverer("runner-1", **fast)
    real = deliverer.record_and_claim
    calls: list[str] = []

    def flaky(*args: Any) -> Any:
        if args[0] and not calls:
            calls.append("unavailable")
            raise OperationalError("COMMIT", None, sqlite3.OperationalError("disk I/O error"))
        if args[0] and len(calls) == 1:
            calls.append("fault")
            raise ValueError("a fault")
        return real(*args)

    deliverer.record_and_claim = flaky  # type: ignore[method-assign,assignment]
    async with running(state, deliverer, settings=settings_for(**fast)):
        await wait_for(lambda: len(calls) == 2)
        clock.advance(3600)  # the lease runs out: the row is claimed and sent again
        sent_again_after = utcnow()
        await wait_for(lambda: get_delivery(state.engine, row_id).state == State.DELIVERED)
    attempts = attempts_of(state.engine, row_id)
    assert attempts[-1].started_at >= sent_again_after - timedelta(seconds=1)


async def test_a_round_that_keeps_failing_is_retried_with_pauses_not_at_once(
    state: BridgeState,
    make_deliverer: DelivererFactory,
    settings_for: Callable[..., Settings],
    mailmodo: respx.MockRouter,
) -> None:
    """An error that is not the database being away (a fault, a read-only standby taken for
    one): rounds come back after doubling pauses, not ten thousand times a second."""
    add_deliveries(state.engine, "a@example.com")
    any_call(mailmodo).mock(return_value=mm_ok())
    fast = {"mailmodo_rate_per_second": 1000.0, "worker_poll_seconds": 30.0}
    deliverer = make_deliverer("runner-1", **fast)
    rounds: list[float] = []

    def broken(*args: Any) -> Any:
        rounds.append(time.monotonic())
        raise ValueError("a fault in what is written")

    deliverer.record_and_claim = broken  # type: ignore[method-assign,assignment]
    async with running(state, deliverer, settings=settings_for(**fast)):
        await asyncio.sleep(1.2)
    # 0.25 s, then 0.5 s apart: three or four rounds in 1.2 s, not thousands.
    assert 2 <= len(rounds) <= 5
    assert all(b - a >= 0.2 for a, b in pairwise(rounds))


async def test_429_storm_then_recovery_delivers_without_using_attempts(
    client: httpx.AsyncClient,
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
    clock: ManualClock,
) -> None:
    emails = ["a@example.com", "b@example.com"]
    ids = add_deliveries(state.engine, *emails)
    storm = [mm_status(429, {"message": "Too many requests"}) for _ in range(6)]
    answer, calls = per_email(storm, lambda email: mm_ok(f"ref-{email}"))
    any_call(mailmodo).mock(side_effect=answer)

    async with running(state, deliverer):
        for done in range(1, 7):
            await wait_for(reached(state, ids, "deferrals", done))
            clock.advance(1000)  # past the longest 429 back-off
        await wait_for(all_in(state, State.DELIVERED))

    assert calls == dict.fromkeys(emails, 7)
    for delivery_id in ids:
        row = get_delivery(state.engine, delivery_id)
        # Six 429s, more than the schedule's four attempts, and still only one attempt used.
        assert (row.state, row.attempts, row.deferrals) == (State.DELIVERED, 1, 6)


async def test_embedded_worker_delivers_what_the_app_accepts(
    sqlite_url: str, mailmodo: respx.MockRouter
) -> None:
    """``serve`` with BRIDGE_EMBEDDED_WORKER: a commit wakes the worker; shutdown is clean."""
    route = any_call(mailmodo).mock(return_value=mm_ok("embedded"))
    settings = make_settings(sqlite_url, embedded_worker=True, worker_poll_seconds=30.0)
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
        bridge: BridgeState = app.state.bridge
        runner = bridge.runner
        assert runner is not None
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bridge.test") as c:
            # Let the worker reach its idle wait (a 30 s poll): only the commit can wake it.
            await wait_for(lambda: heartbeat(bridge, runner.worker_id) is not None)
            await asyncio.sleep(0.1)
            ids = await post_campaign(c, "a@example.com", "b@example.com")
            await wait_for(all_in(bridge, State.DELIVERED), within=3.0)
        engine_state = [get_delivery(bridge.engine, i) for i in ids]
    assert route.call_count == 2
    assert {row.upstream_ref for row in engine_state} == {"embedded"}
    assert bridge.runner_task is not None
    assert bridge.runner_task.done()


async def test_each_committed_heartbeat_is_what_the_lease_fence_measures_from(
    state: BridgeState, deliverer: MailmodoDeliverer
) -> None:
    assert deliverer.beat_at is None
    async with running(state, deliverer) as (_runner, _stop):
        for _ in range(100):
            if deliverer.beat_at is not None:
                break
            await asyncio.sleep(0.02)
    assert deliverer.beat_at is not None
