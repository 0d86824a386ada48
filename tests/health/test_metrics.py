"""The outbox gauges (``app.health.metrics``) when counting fails: before any count the depth
series are left out and their age is +Inf, the other gauges still served; after one, a failing
recount keeps the previous counts, their age growing."""

from __future__ import annotations

import math

from prometheus_client import generate_latest
from sqlalchemy.engine import Engine

from app.clock import ManualClock
from app.health.metrics import app_registry
from app.outbox.counts import CountsSnapshot, OutboxCounts, count_outbox
from tests.factories import add_deliveries
from tests.outbox.test_counts import settle
from tests.test_metrics import value


def broken() -> OutboxCounts:
    raise RuntimeError("database is down")


def test_before_any_count_the_depth_is_left_out_and_its_age_is_infinite(engine: Engine) -> None:
    text = generate_latest(app_registry(engine, CountsSnapshot(broken, 10))).decode()
    assert "ctmm_bridge_outbox_items{" not in text
    assert "\nctmm_bridge_parked_identities " not in text
    assert value(text, "ctmm_bridge_outbox_counts_age_seconds") == math.inf
    assert 'ctmm_bridge_upstream_paused{upstream="mailmodo"} 0.0' in text
    assert 'ctmm_bridge_outbox_oldest_pending_age_seconds{upstream="mailmodo"} 0.0' in text


def test_a_failing_recount_keeps_the_previous_counts_and_their_age_grows(
    engine: Engine, clock: ManualClock
) -> None:
    clock.freeze()
    add_deliveries(engine, "a@x.io")
    tries: list[int] = []

    def count() -> OutboxCounts:
        tries.append(1)
        if len(tries) > 1:
            raise RuntimeError("database is locked")
        return count_outbox(engine)

    snapshot = CountsSnapshot(count, 10)
    registry = app_registry(engine, snapshot)
    text = generate_latest(registry).decode()  # waits for the first count: there is none yet
    assert value(text, "ctmm_bridge_outbox_items", upstream="mailmodo", state="pending") == 1
    assert value(text, "ctmm_bridge_outbox_counts_age_seconds") == 0

    add_deliveries(engine, "b@x.io")
    clock.advance(30)
    for _ in range(2):  # the scrape that starts the recount, and one after it failed
        text = generate_latest(registry).decode()
        assert value(text, "ctmm_bridge_outbox_items", upstream="mailmodo", state="pending") == 1
        assert value(text, "ctmm_bridge_outbox_counts_age_seconds") == 30
        # the live gauge sees the new row's age (both were made at the same frozen moment)
        assert (
            value(text, "ctmm_bridge_outbox_oldest_pending_age_seconds", upstream="mailmodo") == 30
        )
        settle(snapshot)
    assert len(tries) == 2
    assert snapshot.error == "database is locked"
