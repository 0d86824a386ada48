"""The Mailmojo consumer (``app.worker.mailmojo``): every class of answer to the read and to
the write, pauses that never burn attempts, and no write once the lease could have moved."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from app.clock import ManualClock
from app.outbox.models import State
from app.security import fingerprint
from app.state import BridgeState
from app.worker.mailmojo import MailmojoDeliverer
from tests.conftest import ADMIN_TOKEN, CT_AUTH
from tests.factories import all_deliveries, attempts_of, make_due, upstream_state
from tests.mailmojo.conftest import (
    MAILMOJO_TOKEN,
    MAILMOJO_URL,
    ROUTE,
    FakeMailmojo,
    worked_example_call,
)


async def one_sync(client: httpx.AsyncClient, mailmojo: FakeMailmojo, contact: bool = True) -> None:
    if contact:
        mailmojo.store.add("ann@example.com", first_name="Ann", tags=["ct_trial"])
    r = await client.post(ROUTE, json=worked_example_call(), headers=CT_AUTH)
    assert r.status_code == 200, r.text


def the_row(state: BridgeState) -> Any:
    [row] = all_deliveries(state.engine)
    return row


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(
        status, json=body if body is not None else {"detail": "x"}, headers=headers
    )


# (status, body, headers) -> (state, attempts, deferrals, attempt outcome, reason fragment)
ANSWERS: dict[str, tuple[httpx.Response, tuple[State, int, int, str, str]]] = {
    "401": (
        answer(401, {"detail": "Invalid token."}),
        (State.PENDING, 0, 1, "auth_error", "rejected the credentials"),
    ),
    "403": (
        answer(403, {"detail": "You do not have permission."}),
        (State.PENDING, 0, 1, "auth_error", "You do not have permission"),
    ),
    "429": (
        answer(429, {"detail": "Request was throttled."}, {"Retry-After": "7"}),
        (State.PENDING, 0, 1, "rate_limited", "throttled"),
    ),
    "408": (answer(408), (State.PENDING, 1, 0, "retry", "unavailable")),
    "500": (answer(500), (State.PENDING, 1, 0, "retry", "unavailable")),
    "503": (answer(503), (State.PENDING, 1, 0, "retry", "unavailable")),
    "400": (
        answer(400, {"detail": "Enter a valid email address."}),
        (State.FAILED, 1, 0, "failed", "Enter a valid email address"),
    ),
}


@pytest.mark.parametrize("name", list(ANSWERS))
async def test_every_answer_to_the_read_ends_the_attempt_without_a_write(
    client: httpx.AsyncClient,
    state: BridgeState,
    mailmojo: FakeMailmojo,
    deliverer: MailmojoDeliverer,
    name: str,
) -> None:
    response, (row_state, attempts, deferrals, outcome, reason) = ANSWERS[name]
    await one_sync(client, mailmojo)
    mailmojo.read.mock(return_value=response)
    await deliverer.run_once(10)
    assert mailmojo.store.writes == []
    row = the_row(state)
    assert (row.state, row.attempts, row.deferrals) == (row_state, attempts, deferrals)
    assert row.reason is not None
    assert reason in row.reason
    assert row.last_status_code == response.status_code
    [attempt] = attempts_of(state.engine, row.id)
    assert (attempt.outcome, attempt.status_code) == (outcome, response.status_code)


@pytest.mark.parametrize("name", list(ANSWERS))
async def test_every_answer_to_the_write_is_classified(
    client: httpx.AsyncClient,
    state: BridgeState,
    mailmojo: FakeMailmojo,
    deliverer: MailmojoDeliverer,
    name: str,
) -> None:
    response, (row_state, attempts, deferrals, outcome, reason) = ANSWERS[name]
    await one_sync(client, mailmojo)
    mailmojo.update.mock(return_value=response)
    await deliverer.run_once(10)
    row = the_row(state)
    assert (row.state, row.attempts, row.deferrals) == (row_state, attempts, deferrals)
    assert row.reason is not None
    assert reason in row.reason
    [attempt] = attempts_of(state.engine, row.id)
    assert attempt.outcome == outcome


@pytest.mark.parametrize("status", [200, 201, 204])
async def test_any_2xx_to_the_write_is_delivered(
    client: httpx.AsyncClient,
    state: BridgeState,
    mailmojo: FakeMailmojo,
    deliverer: MailmojoDeliverer,
    status: int,
) -> None:
    await one_sync(client, mailmojo)
    mailmojo.update.mock(return_value=httpx.Response(status))
    await deliverer.run_once(10)
    row = the_row(state)
    assert (row.state, row.attempts, row.upstream_ref, row.reason) == (
        State.DELIVERED,
        1,
        "update",
        None,
    )


@pytest.mark.parametrize("where", ["read", "update"])
@pytest.mark.parametrize(
    "error", [httpx.ReadTimeout("slow"), httpx.ConnectError("refused")], ids=["timeout", "network"]
)
async def test_no_answer_is_retried(
    client: httpx.AsyncClient,
    state: BridgeState,
    mailmojo: FakeMailmojo,
    deliverer: MailmojoDeliverer,
    where: str,
    error: Exception,
) -> None:
    await one_sync(client, mailmojo)
    getattr(mailmojo, where).mock(side_effect=error)
    await deliverer.run_once(10)
    row = the_row(state)
    assert (row.state, row.attempts, row.last_status_code) == (State.PENDING, 1, None)
    assert row.reason is not None
    assert row.reason.startswith("Mailmojo ")
    assert mailmojo.update.call_count == (1 if where == "update" else 0)


@pytest.mark.parametrize(
    "body",
    [
        {"detail": "ok"},  # not a contact
        {"email": "someone-else@example.com", "tags": []},  # another contact
        {"email": "ann@example.com", "tags": "ct_vip"},  # tags not a list
        None,  # empty
    ],
    ids=["not-a-contact", "other-email", "tags-not-a-list", "empty"],
)
async def test_an_unclear_read_never_writes(
    client: httpx.AsyncClient,
    state: BridgeState,
    mailmojo: FakeMailmojo,
    deliverer: MailmojoDeliverer,
    body: Any,
) -> None:
    await one_sync(client, mailmojo)
    mailmojo.read.mock(
        return_value=httpx.Response(200, json=body) if body is not None else httpx.Response(200)
    )
    await deliverer.run_once(10)
    assert mailmojo.store.writes == []
    row = the_row(state)
    assert (row.state, row.attempts) == (State.PENDING, 1)
    assert row.reason is not None
    assert "without writing" in row.reason


async def test_a_throttled_read_holds_every_worker_off(
    client: httpx.AsyncClient,
    state: BridgeState,
    mailmojo: FakeMailmojo,
    deliverer: MailmojoDeliverer,
    clock: ManualClock,
) -> None:
    await one_sync(client, mailmojo)
    mailmojo.read.mock(return_value=answer(429, headers={"Retry-After": "30"}))
    await deliverer.run_once(10)
    # The next slot of the shared Mailmojo clock is at least 30 s away.
    [slot] = await deliverer.limiter.reserve(1)
    assert slot >= clock.epoch() + 29


async def test_retries_end_dead_after_the_schedule(
    client: httpx.AsyncClient,
    state: BridgeState,
    mailmojo: FakeMailmojo,
    deliverer: MailmojoDeliverer,
) -> None:
    await one_sync(client, mailmojo)
    mailmojo.read.mock(return_value=answer(503))
    for _ in range(len(state.settings.retry_schedule_seconds) + 1):
        make_due(state.engine)
        await deliverer.run_once(10)
    row = the_row(state)
    assert (row.state, row.attempts) == (State.DEAD, 4)
    assert row.reason is not None
    assert row.reason.startswith("gave up after 4 attempts")


# --- a refused token ---------------------------------------------------------------------------


async def test_a_refused_token_pauses_probes_and_never_burns_attempts(
    client: httpx.AsyncClient,
    state: BridgeState,
    mailmojo: FakeMailmojo,
    deliverer: MailmojoDeliverer,
    clock: ManualClock,
) -> None:
    await one_sync(client, mailmojo)
    mailmojo.read.mock(return_value=answer(401, {"detail": "Invalid token."}))
    await deliverer.run_once(10)
    paused = upstream_state(state.engine, "mailmojo")
    assert paused is not None
    assert paused.paused is True
    assert paused.key_fingerprint == fingerprint(f"{MAILMOJO_TOKEN}:{MAILMOJO_URL}")
    assert paused.reason is not None
    assert "Invalid token." in paused.reason

    ready = (await client.get("/readyz")).json()["checks"]["mailmojo"]
    assert (ready["ok"], ready["paused"]) == (False, True)
    assert "Invalid token." in ready["reason"]
    stats = (
        await client.get("/admin/stats", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    ).json()
    assert stats["upstreams"]["mailmojo"]["paused"] is True

    # Paused: nothing is claimed before the probe, however often the worker asks.
    make_due(state.engine)
    for _ in range(3):
        assert (await deliverer.run_once(10)).claimed == 0
    assert mailmojo.read.call_count == 1

    # The probe is refused again: still no attempt used.
    clock.advance(state.settings.pause_probe_seconds + 1)
    make_due(state.engine)
    assert (await deliverer.run_once(10)).claimed == 1
    row = the_row(state)
    assert (row.state, row.attempts, row.deferrals) == (State.PENDING, 0, 2)

    # Fixed: the next probe goes through and resumes.
    mailmojo.read.mock(side_effect=mailmojo.store.read)
    clock.advance(state.settings.pause_probe_seconds + 1)
    make_due(state.engine)
    assert (await deliverer.run_once(10)).outcomes == {"delivered": 1}
    resumed = upstream_state(state.engine, "mailmojo")
    assert resumed is not None
    assert resumed.paused is False
    row = the_row(state)
    assert (row.state, row.attempts, row.deferrals) == (State.DELIVERED, 1, 2)


async def test_an_operator_resumes_mailmojo(
    client: httpx.AsyncClient,
    state: BridgeState,
    mailmojo: FakeMailmojo,
    deliverer: MailmojoDeliverer,
) -> None:
    await one_sync(client, mailmojo)
    mailmojo.update.mock(return_value=answer(403))
    await deliverer.run_once(10)
    r = await client.post(
        "/admin/upstreams/mailmojo/resume", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["resumed"] is True
    paused = upstream_state(state.engine, "mailmojo")
    assert paused is not None
    assert paused.paused is False


# --- the lease ---------------------------------------------------------------------------------


async def test_no_write_once_the_lease_could_have_moved(
    client: httpx.AsyncClient,
    state: BridgeState,
    mailmojo: FakeMailmojo,
    deliverer: MailmojoDeliverer,
    clock: ManualClock,
) -> None:
    """A read that took most of the lease: the write could race the row's next owner, so the
    row is given back unsent (no attempt used) and read afresh next time."""
    await one_sync(client, mailmojo)

    def slow_read(request: httpx.Request, email: str) -> httpx.Response:
        clock.advance(state.settings.lease_seconds - 10)
        return mailmojo.store.read(request, email)

    mailmojo.read.mock(side_effect=slow_read)
    stats = await deliverer.run_once(10)
    assert stats.released == 1
    assert mailmojo.store.writes == []
    row = the_row(state)
    assert (row.state, row.attempts, row.deferrals, row.lease_token) == (
        State.PENDING,
        0,
        0,
        None,
    )
    assert attempts_of(state.engine, row.id) == []


async def test_stopping_before_the_write_gives_the_row_back(
    client: httpx.AsyncClient,
    state: BridgeState,
    mailmojo: FakeMailmojo,
    deliverer: MailmojoDeliverer,
) -> None:
    await one_sync(client, mailmojo)
    stop = asyncio.Event()

    def read_then_stop(request: httpx.Request, email: str) -> httpx.Response:
        stop.set()
        return mailmojo.store.read(request, email)

    mailmojo.read.mock(side_effect=read_then_stop)
    # A far slot for the write: the stop comes first.
    deliverer.limiter.interval = 3600.0
    stats = await deliverer.run_once(1, stop)
    assert stats.released == 1
    assert mailmojo.store.writes == []
    assert the_row(state).state == State.PENDING


# --- what the operator reads -------------------------------------------------------------------


def worker_lines(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if "delivery_id" in e]


async def test_each_attempt_has_the_shared_operator_line(
    client: httpx.AsyncClient,
    state: BridgeState,
    mailmojo: FakeMailmojo,
    deliverer: MailmojoDeliverer,
) -> None:
    """The same line as a Mailmodo attempt (``app.worker.outcome_log``), upstream mailmojo."""
    await one_sync(client, mailmojo)
    mailmojo.read.mock(return_value=answer(503))
    with capture_logs() as logs:
        await deliverer.run_once(10)
    [retry] = worker_lines(logs)
    assert retry["log_level"] == "warning"
    assert retry["event"] == "delivery attempt failed; will retry"
    assert (retry["upstream"], retry["attempt"], retry["status_code"]) == ("mailmojo", 1, 503)
    assert "next_attempt_at" in retry

    make_due(state.engine)
    mailmojo.read.mock(side_effect=mailmojo.store.read)
    with capture_logs() as logs:
        await deliverer.run_once(10)
    [done] = worker_lines(logs)
    assert (done["log_level"], done["event"], done["state"]) == ("info", "delivered", "delivered")
    assert (done["upstream"], done["attempt"]) == ("mailmojo", 2)
    assert "email" not in done


async def test_an_unexpected_error_is_recorded_as_a_retry(
    client: httpx.AsyncClient,
    state: BridgeState,
    mailmojo: FakeMailmojo,
    deliverer: MailmojoDeliverer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug in the attempt never loses the row: one retry attempt, logged with the upstream."""
    await one_sync(client, mailmojo)

    async def broken(email: str) -> object:
        raise RuntimeError("boom")

    monkeypatch.setattr(deliverer.client, "get_contact", broken)
    with capture_logs() as logs:
        stats = await deliverer.run_once(10)
    assert stats.outcomes == {"pending": 1}
    row = the_row(state)
    assert (row.state, row.attempts, row.reason) == (
        State.PENDING,
        1,
        "unexpected error: RuntimeError: boom",
    )
    [attempt] = attempts_of(state.engine, row.id)
    assert attempt.outcome == "retry"
    [error] = [e for e in worker_lines(logs) if e["log_level"] == "error"]
    assert (error["event"], error["upstream"]) == ("delivery failed unexpectedly", "mailmojo")
