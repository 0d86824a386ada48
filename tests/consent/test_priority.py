"""Reads never delay a trigger: the claim takes every due trigger first and reads only in the
room left, within ``BRIDGE_RECONCILE_RATE_SHARE`` of the Mailmodo rate (over time, and across
workers sharing the database). Also the ``skip`` edge, applied under the lease only."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import pytest
from sqlalchemy.engine import Engine

from app.clock import ManualClock
from app.db import create_db_engine
from app.outbox import transitions
from app.outbox.claim_repository import skip_leased
from app.outbox.models import Operation, State
from app.system.migrations import upgrade
from app.worker.build import build_mailmodo_deliverer
from app.worker.delivery import MailmodoDeliverer
from tests.conftest import make_settings
from tests.factories import add_deliveries, all_deliveries, get_delivery

READ = Operation.CONTACT_STATUS


@pytest.fixture
def engine_and_settings(database_url: str) -> Iterator[tuple[Engine, object]]:
    settings = make_settings(database_url, mailmodo_rate_per_second=5.0, reconcile_rate_share=0.2)
    engine = create_db_engine(settings)
    upgrade(settings, engine)
    yield engine, settings
    engine.dispose()


@pytest.fixture
async def deliverers(
    engine_and_settings: tuple[Engine, object],
) -> AsyncIterator[list[MailmodoDeliverer]]:
    engine, settings = engine_and_settings
    built = [
        build_mailmodo_deliverer(engine, settings, f"w{i}")  # type: ignore[arg-type]
        for i in range(2)
    ]
    yield [d for d in built if d is not None]
    for d in built:
        assert d is not None
        await d.client.aclose()


def _reads(engine: Engine, n: int) -> None:
    emails = [f"r{i}@example.com" for i in range(n)]
    add_deliveries(engine, *emails, operation=READ, payload={"email": "x"})


async def test_a_backlog_of_reads_never_takes_a_triggers_place(
    deliverers: list[MailmodoDeliverer], clock: ManualClock
) -> None:
    worker = deliverers[0]
    engine = worker.engine
    clock.freeze()
    _reads(engine, 500)
    # Triggers due *later* than every read still go first.
    triggers = add_deliveries(
        engine, *(f"t{i}@example.com" for i in range(5)), next_attempt_at=clock.now()
    )
    first = worker.claim(3)
    assert [r.operation for r in first] == ["campaign.trigger"] * 3
    second = worker.claim(10)
    ops = [r.operation for r in second]
    assert ops[:2] == ["campaign.trigger"] * 2  # triggers first in the list: earlier slots
    assert 1 <= ops.count(READ.value) <= 2  # about one second of 5/s x 0.2
    assert {r.id for r in first + second} >= set(triggers)
    # The share is used up for now: no more reads until time passes.
    assert worker.claim(10) == []
    clock.advance(1)
    assert [r.operation for r in worker.claim(10)] == [READ.value]


async def test_reads_take_at_most_their_share_over_time_across_workers(
    deliverers: list[MailmodoDeliverer], clock: ManualClock
) -> None:
    engine = deliverers[0].engine
    clock.freeze()
    _reads(engine, 300)
    claimed = 0
    for _ in range(100):  # 10 s of claims every 0.1 s by two workers
        for worker in deliverers:
            claimed += len(worker.claim(50))
        clock.advance(0.1)
    # 5/s x 0.2 = 1 read per second: 10 s allow 10, plus one horizon of slack.
    assert 9 <= claimed <= 12


async def test_with_no_share_left_a_trigger_still_goes_at_once(
    deliverers: list[MailmodoDeliverer], clock: ManualClock
) -> None:
    worker = deliverers[0]
    clock.freeze()
    _reads(worker.engine, 50)
    worker.claim(10)  # uses the reads' share
    [trigger] = add_deliveries(worker.engine, "t@example.com")
    assert [r.id for r in worker.claim(10)] == [trigger]


async def test_skip_applies_only_under_the_lease(
    deliverers: list[MailmodoDeliverer], clock: ManualClock
) -> None:
    worker = deliverers[0]
    engine = worker.engine
    [row_id] = add_deliveries(engine, "a@example.com", operation=Operation.CONTACT_UNSUBSCRIBE)
    [claimed] = worker.claim(1)
    stale = replace(claimed, lease_token="someone-else")
    with engine.begin() as conn:
        assert not skip_leased(conn, stale, transitions.skip(clock.now(), "echo"))
        assert skip_leased(conn, claimed, transitions.skip(clock.now(), "echo"))
    row = get_delivery(engine, row_id)
    assert (row.state, row.reason, row.lease_token) == (State.DROPPED, "echo", None)
    assert row.finished_at is not None
    with engine.begin() as conn:  # a second time: the lease is gone
        assert not skip_leased(conn, claimed, transitions.skip(clock.now(), "echo"))
    assert len(all_deliveries(engine)) == 1
