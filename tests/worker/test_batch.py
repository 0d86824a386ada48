"""Outcomes in batches (app/worker/batch.py, OutboxConsumer.record_and_claim): many outcomes
and the claim that refills their slots in one transaction, a lease lost in the middle of a
batch, and the crash bound: answered-but-unrecorded calls never exceed the concurrency."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy import event
from sqlalchemy.engine import Engine

from app.outbox.models import State
from app.outbox.repository import Claimed
from app.state import BridgeState
from app.upstream import AttemptOutcome, Outcome
from app.worker.batch import OutcomeBatcher
from app.worker.delivery import MailmodoDeliverer
from tests.factories import add_deliveries, all_deliveries, attempts_of, get_delivery, set_rows
from tests.worker.conftest import DelivererFactory, any_call, mm_ok, wait_for
from tests.worker.test_runner import running


@contextmanager
def counting_commits(engine: Engine) -> Iterator[list[int]]:
    commits: list[int] = []

    def on_commit(_conn: Any) -> None:
        commits.append(1)

    event.listen(engine, "commit", on_commit)
    try:
        yield commits
    finally:
        event.remove(engine, "commit", on_commit)


def ok(ref: str = "r") -> Outcome:
    return Outcome(AttemptOutcome.DELIVERED, 200, None, 3.0, response_body="{}", ref=ref)


async def test_many_outcomes_and_the_refill_claim_are_one_transaction(
    client: httpx.AsyncClient, state: BridgeState, deliverer: MailmodoDeliverer
) -> None:
    ids = add_deliveries(state.engine, *(f"u{i}@example.com" for i in range(9)))
    first, slots = deliverer.claim_paced(5, deliverer.limiter)
    assert len(first) == len(slots) == 5

    with counting_commits(state.engine) as commits:
        changes, more, more_slots = deliverer.record_and_claim(
            [(row, ok()) for row in first], 10, deliverer.limiter
        )

    assert len(commits) == 1
    assert [c.state for c in changes] == [State.DELIVERED] * 5
    assert sorted(r.id for r in more) == ids[5:]
    # Each refilled row has its own rate slot, reserved in the same commit.
    assert len(more_slots) == 4
    assert sorted(more_slots) == more_slots
    for row in first:
        assert get_delivery(state.engine, row.id).state == State.DELIVERED
        assert len(attempts_of(state.engine, row.id)) == 1
    for row in more:
        assert get_delivery(state.engine, row.id).leased_by == deliverer.worker_id


async def test_a_lease_lost_mid_batch_keeps_the_new_owner_and_records_the_call(
    client: httpx.AsyncClient,
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    add_deliveries(state.engine, "a@example.com", "b@example.com", "c@example.com")
    rows, _ = deliverer.claim_paced(3, deliverer.limiter)
    stolen = rows[1]
    # Another worker took the middle row (its lease ran out and was claimed again).
    set_rows(state.engine, [stolen.id], lease_token="someone-else", leased_by="other-worker")

    changes = deliverer.record_many([(row, ok()) for row in rows])

    assert len(changes) == 3
    taken = get_delivery(state.engine, stolen.id)
    assert (taken.state, taken.lease_token, taken.leased_by, taken.attempts) == (
        State.PENDING,
        "someone-else",
        "other-worker",
        0,
    )
    assert len(attempts_of(state.engine, stolen.id)) == 1  # the call was made: kept
    for row in (rows[0], rows[2]):
        kept = get_delivery(state.engine, row.id)
        assert (kept.state, kept.lease_token, kept.attempts) == (State.DELIVERED, None, 1)


async def test_calls_answered_but_not_recorded_never_exceed_the_concurrency(
    client: httpx.AsyncClient,
    state: BridgeState,
    make_deliverer: DelivererFactory,
    settings_for: Any,
    mailmodo: respx.MockRouter,
) -> None:
    """The crash bound: while outcomes cannot be committed, no slot is refilled, so a kill
    at that moment re-sends at most ``concurrency`` calls."""
    cap = 3
    add_deliveries(state.engine, *(f"u{i}@example.com" for i in range(12)))
    route = any_call(mailmodo).mock(return_value=mm_ok())
    deliverer = make_deliverer(mailmodo_max_concurrency=cap)
    release = threading.Event()
    blocked = threading.Event()
    real = deliverer.record_and_claim

    def stuck_commit(
        results: Sequence[tuple[Claimed, Outcome]], limit: int, limiter: Any, answered: Any
    ) -> Any:
        if results:  # the disk is stuck: outcomes do not commit until released
            blocked.set()
            release.wait(10)
        return real(results, limit, limiter, answered)

    deliverer.record_and_claim = stuck_commit  # type: ignore[method-assign]
    settings = settings_for(mailmodo_max_concurrency=cap)
    try:
        async with running(state, deliverer, settings=settings):
            await wait_for(blocked.is_set)
            await asyncio.sleep(0.3)  # time enough to send more, were it allowed
            sent_while_stuck = route.call_count
            release.set()
            await wait_for(
                lambda: all(r.state == State.DELIVERED for r in all_deliveries(state.engine))
            )
    finally:
        release.set()
    assert 1 <= sent_while_stuck <= cap
    assert route.call_count == 12  # and each exactly once


async def test_a_failed_commit_fails_every_waiting_delivery() -> None:
    def broken(_results: Sequence[tuple[Claimed, Outcome]], _answered: Any) -> list[int]:
        raise RuntimeError("disk full")

    batcher: OutcomeBatcher[int] = OutcomeBatcher(broken)
    row = Claimed(
        id=1,
        operation="campaign.trigger",
        target="c",
        email=None,
        clevertap_id=None,
        payload="{}",
        attempts=0,
        deferrals=0,
        lease_token="t",
        leased_until=None,
        upstream_ref=None,
    )
    results = await asyncio.gather(
        batcher.record(row, ok()), batcher.record(row, ok()), return_exceptions=True
    )
    assert [type(r) for r in results] == [RuntimeError, RuntimeError]
    await batcher.drain()
    assert batcher.pending == 0


async def test_self_flushing_batcher_groups_what_arrives_during_a_commit() -> None:
    gate = threading.Event()
    batches: list[int] = []

    def write(results: Sequence[tuple[Claimed, Outcome]], _answered: Any) -> list[int]:
        gate.wait(5)
        batches.append(len(results))
        return [r.id for r, _ in results]

    batcher: OutcomeBatcher[int] = OutcomeBatcher(write)

    def row(i: int) -> Claimed:
        return Claimed(i, "campaign.trigger", "c", None, None, "{}", 0, 0, "t", None, None)

    first = asyncio.create_task(batcher.record(row(1), ok()))
    await asyncio.sleep(0.05)  # the first commit is under way
    rest = [asyncio.create_task(batcher.record(row(i), ok())) for i in range(2, 7)]
    await asyncio.sleep(0.05)
    gate.set()
    assert await first == 1
    assert [await t for t in rest] == [2, 3, 4, 5, 6]
    assert batches == [1, 5]
