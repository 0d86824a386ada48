"""Regressions from the correctness review: failures that must neither loop nor double-send."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import respx

import app.worker.consumer as consumer_module
from app.clock import ManualClock
from app.outbox.models import State
from app.state import BridgeState
from app.worker import ratelimit
from app.worker.delivery import MailmodoDeliverer
from tests.conftest import CT_AUTH
from tests.factories import (
    add_deliveries,
    all_deliveries,
    attempts_of,
    get_delivery,
)
from tests.worker.conftest import (
    DelivererFactory,
    any_call,
)


async def test_an_unreadable_answer_is_a_recorded_retry_not_a_silent_loop(
    client: httpx.AsyncClient,
    state: BridgeState,
    mailmodo: respx.MockRouter,
    deliverer: MailmodoDeliverer,
) -> None:
    """A body httpx cannot decode used to crash the task after Mailmodo had answered: the row
    came back after every lease, was sent again, and no attempt was ever recorded."""
    route = any_call(mailmodo).mock(
        side_effect=lambda _request: httpx.Response(
            200, stream=httpx.ByteStream(b"not gzip at all"), headers={"Content-Encoding": "gzip"}
        )
    )
    [delivery_id] = add_deliveries(state.engine, "a@example.com")
    stats = await deliverer.run_once(10)
    assert stats.outcomes == {"pending": 1}
    row = get_delivery(state.engine, delivery_id)
    assert (row.state, row.attempts) == (State.PENDING, 1)  # counts towards dead
    [attempt] = attempts_of(state.engine, delivery_id)
    assert attempt.outcome == "retry"
    assert attempt.error is not None
    assert "could not be read" in attempt.error
    assert route.call_count == 1


async def test_contact_write_is_not_sent_once_the_lease_could_have_moved(
    client: httpx.AsyncClient,
    state: BridgeState,
    mailmodo: respx.MockRouter,
    make_deliverer: DelivererFactory,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Between the contact read and the write a worker waits for a second rate slot; if its
    lease runs out meanwhile, another worker may own the row, so it gives the row back."""
    mailmodo.get("/api/v1/getContactDetails").mock(return_value=httpx.Response(200, json={}))
    write = mailmodo.post("/api/v1/addToList").mock(
        return_value=httpx.Response(200, json={"success": True})
    )
    profile = {"Email": "ann@example.com", "Identity": "u-42", "ObjectId": "__ann"}
    r = await client.post(
        "/clevertap/lists/Newsletter/contacts", json={"profiles": [profile]}, headers=CT_AUTH
    )
    assert r.status_code == 200
    first, second = make_deliverer("worker-A"), make_deliverer("worker-B")
    real_wait = ratelimit.wait_until
    waits = {"n": 0}

    async def slow_second_slot(when: float, stop: Any = None) -> bool:
        waits["n"] += 1
        if waits["n"] == 2:  # worker A, between its read and its write
            clock.advance(state.settings.lease_seconds + 1)
            await second.run_once(5)  # worker B takes the expired lease and delivers
        return await real_wait(when, stop)

    monkeypatch.setattr(consumer_module, "wait_until", slow_second_slot)
    stats = await first.run_once(5)
    assert stats.released == 1
    assert write.call_count == 1  # only worker B wrote
    [row] = all_deliveries(state.engine)
    assert row.state == State.DELIVERED
