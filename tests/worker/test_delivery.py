"""Delivering outbox rows to Mailmodo: the calls, every class of answer, pauses and leases.

Deliveries are created the real way (CleverTap routes over ASGI); delivery is driven by
calling ``MailmodoDeliverer.run_once`` directly against a faked Mailmodo.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import respx
from pydantic import ValidationError
from sqlalchemy import text

from app.clock import ManualClock, utcnow
from app.outbox import leases, repository, transitions
from app.outbox.models import State
from app.outbox.policy import MAX_RETRY_AFTER
from app.security import fingerprint
from app.state import BridgeState
from app.system import recovery
from app.upstream import MAX_KEPT_BODY, AttemptOutcome, Outcome
from app.worker.consumer import GiveBack
from app.worker.delivery import MailmodoDeliverer
from tests.conftest import CT_AUTH, MAILMODO_KEY, make_settings
from tests.factories import (
    add_deliveries,
    all_deliveries,
    attempts_of,
    get_delivery,
    make_due,
    upstream_state,
)
from tests.worker.conftest import (
    DelivererFactory,
    any_call,
    mm_ok,
    mm_status,
    post_ct,
    seconds_between,
)

SCHEDULE = (1.0, 2.0, 4.0)  # the compressed schedule of the test settings


def delay_of(row: Any) -> float:
    """Seconds from the write of the transition to the row's next due time."""
    return seconds_between(row.next_attempt_at, row.updated_at)


def replay_jitter(seed: int, *delays: float) -> list[float]:
    """What ``app.clock.jitter`` yields for ``delays`` right after ``jitter_rng.seed(seed)``."""
    rng = random.Random(seed)
    return [d * rng.uniform(0.8, 1.2) for d in delays]


# --- the calls ------------------------------------------------------------------------------


async def test_campaign_trigger_posts_stored_payload_with_api_key(
    client: httpx.AsyncClient,
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
) -> None:
    [delivery_id] = add_deliveries(
        state.engine,
        "Ann@Example.com",
        target="camp-42",
        data={"clevertap_id": "__obj0", "promocode": "MT50"},
    )
    route = mailmodo.post("/api/v1/triggerCampaign/camp-42").mock(return_value=mm_ok())

    stats = await deliverer.run_once(10)

    assert stats.claimed == 1
    assert stats.outcomes == {"delivered": 1}
    assert route.call_count == 1
    request = route.calls.last.request
    assert request.method == "POST"
    assert request.headers["mmApiKey"] == MAILMODO_KEY
    assert request.headers["Content-Type"] == "application/json"
    row = get_delivery(state.engine, delivery_id)
    assert request.content == row.payload.encode()
    sent = orjson.loads(request.content)
    assert sent["email"] == "Ann@Example.com"  # as stored; the row keys on lower case
    assert row.email == "ann@example.com"
    assert sent["data"]["clevertap_id"] == "__obj0"
    assert sent["data"]["promocode"] == "MT50"


@pytest.mark.parametrize(
    ("route", "mm_path", "body", "expected"),
    [
        (
            "/clevertap/journeys/{id}/start",
            "/hooks/start/{id}",
            {"email": "jo@example.com", "data": {"plan": "gold", "clevertap_id": "ct-7"}},
            {"email": "jo@example.com", "data": {"plan": "gold", "clevertap_id": "ct-7"}},
        ),
        (
            "/clevertap/journeys/{id}/abort",
            "/hooks/abort/{id}",
            {"email": "jo@example.com", "reason": "churned", "clevertap_id": "ct-7"},
            {"email": "jo@example.com", "reason": "churned"},
        ),
    ],
    ids=["start", "abort"],
)
async def test_journey_calls_use_hooks_paths(
    client: httpx.AsyncClient,
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
    route: str,
    mm_path: str,
    body: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    journey = "3f135bf7-0000-4e31-b265-f61cfe1bd423"
    [delivery_id] = await post_ct(client, route.format(id=journey), body)
    mm_route = mailmodo.post(mm_path.format(id=journey)).mock(
        return_value=httpx.Response(200, json={"success": True, "message": "journey Executed"})
    )

    await deliverer.run_once(10)

    assert mm_route.call_count == 1
    request = mm_route.calls.last.request
    assert request.headers["mmApiKey"] == MAILMODO_KEY
    assert orjson.loads(request.content) == expected
    row = get_delivery(state.engine, delivery_id)
    assert request.content == row.payload.encode()
    assert row.state == State.DELIVERED
    assert row.upstream_ref is None  # abort answers carry no ref; start here had none either


@pytest.mark.parametrize(
    ("route", "target", "raw_path"),
    [
        (
            "/clevertap/campaigns/camp%20id%3Fx%231%26y",
            "camp id?x#1&y",
            b"/api/v1/triggerCampaign/camp%20id%3Fx%231%26y",
        ),
        ("/clevertap/journeys/j%C3%B6urney%25/start", "jöurney%", b"/hooks/start/j%C3%B6urney%25"),
    ],
    ids=["campaign", "journey"],
)
async def test_target_ids_are_url_quoted(
    client: httpx.AsyncClient,
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
    route: str,
    target: str,
    raw_path: bytes,
) -> None:
    [delivery_id] = await post_ct(client, route, {"email": "q@example.com"})
    assert get_delivery(state.engine, delivery_id).target == target
    mm_route = mailmodo.route().mock(return_value=mm_ok())

    await deliverer.run_once(10)

    assert mm_route.call_count == 1
    assert mm_route.calls.last.request.url.raw_path == raw_path


# --- classification: delivered and failed for good ------------------------------------------


async def test_success_is_delivered_and_ref_kept(
    client: httpx.AsyncClient,
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
) -> None:
    [delivery_id] = add_deliveries(state.engine, "a@example.com")
    any_call(mailmodo).mock(return_value=mm_ok("ref-123"))

    await deliverer.run_once(10)

    row = get_delivery(state.engine, delivery_id)
    assert row.state == State.DELIVERED
    assert row.upstream_ref == "ref-123"
    assert row.attempts == 1
    assert row.deferrals == 0
    assert row.last_status_code == 200
    assert row.reason is None
    assert row.finished_at is not None
    assert row.lease_token is None
    assert row.leased_by is None
    [attempt] = attempts_of(state.engine, delivery_id)
    assert attempt.number == 1
    assert attempt.outcome == AttemptOutcome.DELIVERED
    assert attempt.status_code == 200
    assert attempt.worker_id == "test-worker"
    assert attempt.response_body is not None
    assert "ref-123" in attempt.response_body
    # Delivered rows are never claimed again.
    make_due(state.engine)
    assert (await deliverer.run_once(10)).claimed == 0


FAILED_ANSWERS = [
    pytest.param(
        200,
        {"success": False, "message": "The provided email is not a valid email id"},
        ["Mailmodo refused", "HTTP 200", "The provided email is not a valid email id"],
        id="200-success-false",
    ),
    pytest.param(
        400,
        {
            "Status": "400",
            "message": "other error message",
            "errors": [{"email": "a@example.com", "failure reason": "email is blocked"}],
        },
        [
            "HTTP 400",
            "other error message",
            "email: a@example.com",
            "failure reason: email is blocked",
        ],
        id="400-mailmodo-shape",
    ),
    pytest.param(
        400,
        {"success": False, "status": "error", "message": "Tried executing journey and Failed"},
        ["HTTP 400", "Tried executing journey and Failed"],
        id="400-journey-shape",
    ),
    pytest.param(
        404,
        {"error": "error", "message": "Some Internal Error Occurred: 404"},
        ["HTTP 404", "Some Internal Error Occurred: 404"],
        id="404",
    ),
    pytest.param(
        422, "campaign is not a triggered campaign", ["HTTP 422", "not a triggered"], id="422-text"
    ),
]


@pytest.mark.parametrize(("status", "body", "fragments"), FAILED_ANSWERS)
async def test_refusals_fail_for_good_with_reason(
    client: httpx.AsyncClient,
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
    status: int,
    body: Any,
    fragments: list[str],
) -> None:
    [delivery_id] = add_deliveries(state.engine, "a@example.com")
    route = any_call(mailmodo).mock(return_value=mm_status(status, body))

    stats = await deliverer.run_once(10)

    assert stats.outcomes == {"failed": 1}
    row = get_delivery(state.engine, delivery_id)
    assert row.state == State.FAILED
    assert row.attempts == 1
    assert row.last_status_code == status
    assert row.finished_at is not None
    assert row.lease_token is None
    assert row.reason is not None
    for fragment in fragments:
        assert fragment in row.reason
    [attempt] = attempts_of(state.engine, delivery_id)
    assert attempt.outcome == AttemptOutcome.FAILED
    assert attempt.status_code == status
    assert attempt.error == row.reason
    assert attempt.response_body == route.calls.last.response.text
    # Failed for good: never tried again.
    make_due(state.engine)
    assert (await deliverer.run_once(10)).claimed == 0
    assert route.call_count == 1


# --- classification: retried ----------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
async def test_unavailable_answers_are_retried_on_schedule(
    client: httpx.AsyncClient,
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
    clock: ManualClock,
    status: int,
) -> None:
    [delivery_id] = add_deliveries(state.engine, "a@example.com")
    any_call(mailmodo).mock(return_value=mm_status(status))

    stats = await deliverer.run_once(10)

    assert stats.outcomes == {"pending": 1}
    row = get_delivery(state.engine, delivery_id)
    assert row.state == State.PENDING
    assert row.attempts == 1
    assert row.deferrals == 0
    assert row.last_status_code == status
    assert row.lease_token is None
    assert row.finished_at is None
    assert row.reason is not None
    assert f"Mailmodo unavailable: HTTP {status}" in row.reason
    [expected] = replay_jitter(clock.seed, SCHEDULE[0])
    assert delay_of(row) == pytest.approx(expected, abs=1e-5)
    assert 0.8 <= delay_of(row) <= 1.2
    assert row.next_attempt_at > datetime.now(UTC)
    [attempt] = attempts_of(state.engine, delivery_id)
    assert (attempt.number, attempt.outcome, attempt.status_code) == (1, "retry", status)
    # Not due yet: nothing is claimed before the backoff has passed.
    assert (await deliverer.run_once(10)).claimed == 0


@pytest.mark.parametrize(
    ("error", "what"),
    [
        (httpx.ReadTimeout("read timed out"), "did not answer in time"),
        (httpx.ConnectTimeout("connect timed out"), "did not answer in time"),
        (httpx.ConnectError("connection refused"), "unreachable"),
        (httpx.RemoteProtocolError("peer closed connection"), "unreachable"),
    ],
    ids=["read-timeout", "connect-timeout", "connect-error", "protocol-error"],
)
async def test_timeouts_and_network_errors_are_retried(
    client: httpx.AsyncClient,
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
    clock: ManualClock,
    error: Exception,
    what: str,
) -> None:
    [delivery_id] = add_deliveries(state.engine, "a@example.com")
    any_call(mailmodo).mock(side_effect=error)

    await deliverer.run_once(10)

    row = get_delivery(state.engine, delivery_id)
    assert row.state == State.PENDING
    assert row.attempts == 1
    assert row.last_status_code is None
    assert row.reason is not None
    assert f"Mailmodo {what}" in row.reason
    [expected] = replay_jitter(clock.seed, SCHEDULE[0])
    assert delay_of(row) == pytest.approx(expected, abs=1e-5)
    [attempt] = attempts_of(state.engine, delivery_id)
    assert attempt.outcome == AttemptOutcome.RETRY
    assert attempt.status_code is None
    assert attempt.response_body is None
    assert attempt.duration_ms >= 0


async def test_backoff_grows_then_dead_with_every_attempt_kept(
    client: httpx.AsyncClient,
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
    clock: ManualClock,
) -> None:
    [delivery_id] = add_deliveries(state.engine, "a@example.com")
    route = any_call(mailmodo).mock(return_value=mm_status(503, {"message": "down"}))
    expected = replay_jitter(clock.seed, *SCHEDULE)

    for n, want in enumerate(expected, start=1):
        await deliverer.run_once(10)
        row = get_delivery(state.engine, delivery_id)
        assert (row.state, row.attempts) == (State.PENDING, n)
        assert delay_of(row) == pytest.approx(want, abs=1e-5)
        assert SCHEDULE[n - 1] * 0.8 <= delay_of(row) <= SCHEDULE[n - 1] * 1.2
        make_due(state.engine)

    stats = await deliverer.run_once(10)

    assert stats.outcomes == {"dead": 1}
    row = get_delivery(state.engine, delivery_id)
    assert row.state == State.DEAD
    assert row.attempts == 4 == len(SCHEDULE) + 1
    assert row.finished_at is not None
    assert row.reason is not None
    assert row.reason.startswith("gave up after 4 attempts")
    assert "HTTP 503: down" in row.reason
    attempts = attempts_of(state.engine, delivery_id)
    assert [a.number for a in attempts] == [1, 2, 3, 4]
    for attempt in attempts:
        assert attempt.status_code == 503
        assert attempt.outcome == AttemptOutcome.RETRY
        assert attempt.duration_ms >= 0
        assert attempt.response_body == '{"message":"down"}'
        assert attempt.started_at <= row.finished_at
    # Dead rows are not retried.
    make_due(state.engine)
    assert (await deliverer.run_once(10)).claimed == 0
    assert route.call_count == 4


async def test_retry_after_seconds_is_honoured_when_longer(
    client: httpx.AsyncClient,
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
) -> None:
    [delivery_id] = add_deliveries(state.engine, "a@example.com")
    any_call(mailmodo).mock(return_value=mm_status(503, headers={"Retry-After": "30"}))

    await deliverer.run_once(10)

    row = get_delivery(state.engine, delivery_id)
    assert (row.state, row.attempts) == (State.PENDING, 1)
    assert delay_of(row) == pytest.approx(30.0, abs=1e-5)


async def test_retry_after_shorter_than_schedule_keeps_backoff(
    client: httpx.AsyncClient,
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
    clock: ManualClock,
) -> None:
    [delivery_id] = add_deliveries(state.engine, "a@example.com")
    any_call(mailmodo).mock(return_value=mm_status(500, headers={"Retry-After": "0"}))

    await deliverer.run_once(10)

    [expected] = replay_jitter(clock.seed, SCHEDULE[0])
    assert delay_of(get_delivery(state.engine, delivery_id)) == pytest.approx(expected, abs=1e-5)


async def test_retry_after_http_date_is_honoured(
    client: httpx.AsyncClient,
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
) -> None:
    [delivery_id] = add_deliveries(state.engine, "a@example.com")
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    any_call(mailmodo).mock(return_value=mm_status(503, headers={"Retry-After": when}))

    await deliverer.run_once(10)

    row = get_delivery(state.engine, delivery_id)
    assert row.attempts == 1
    assert 118.0 <= delay_of(row) <= 120.5


async def test_absurd_retry_after_is_capped(
    client: httpx.AsyncClient,
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
) -> None:
    [delivery_id] = add_deliveries(state.engine, "a@example.com")
    any_call(mailmodo).mock(return_value=mm_status(502, headers={"Retry-After": "9999999"}))

    await deliverer.run_once(10)

    assert delay_of(get_delivery(state.engine, delivery_id)) == pytest.approx(MAX_RETRY_AFTER)


# --- classification: rate limited -----------------------------------------------------------


def rate_slot(state: BridgeState) -> float:
    with state.engine.begin() as conn:
        value = conn.execute(text("SELECT next_at FROM rate_slots WHERE name = 'mailmodo'"))
        return float(value.scalar_one())


async def test_429_defers_without_using_an_attempt_and_honours_retry_after(
    client: httpx.AsyncClient,
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
    clock: ManualClock,
) -> None:
    [delivery_id] = add_deliveries(state.engine, "a@example.com")
    any_call(mailmodo).mock(
        return_value=mm_status(429, {"message": "Too many requests"}, {"Retry-After": "17"})
    )

    now = clock.freeze().timestamp()
    stats = await deliverer.run_once(10)

    assert stats.outcomes == {"pending": 1}
    row = get_delivery(state.engine, delivery_id)
    assert row.state == State.PENDING
    assert row.attempts == 0
    assert row.deferrals == 1
    assert row.last_status_code == 429
    assert row.reason is not None
    assert "Mailmodo throttled: HTTP 429: Too many requests" in row.reason
    assert delay_of(row) == pytest.approx(17.0, abs=1e-5)
    [attempt] = attempts_of(state.engine, delivery_id)
    assert (attempt.number, attempt.outcome, attempt.status_code) == (1, "rate_limited", 429)
    # Every worker holds off: the shared rate slot moved past the Retry-After.
    assert rate_slot(state) == pytest.approx(now + 17)


async def test_429_without_retry_after_backs_off_exponentially(
    client: httpx.AsyncClient,
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
    clock: ManualClock,
) -> None:
    [delivery_id] = add_deliveries(state.engine, "a@example.com")
    any_call(mailmodo).mock(return_value=mm_status(429, {"message": "slow down"}))
    expected = replay_jitter(clock.seed, 5.0, 10.0, 20.0)

    for n, want in enumerate(expected, start=1):
        await deliverer.run_once(10)
        row = get_delivery(state.engine, delivery_id)
        assert (row.state, row.attempts, row.deferrals) == (State.PENDING, 0, n)
        assert delay_of(row) == pytest.approx(want, abs=1e-5)
        make_due(state.engine)


async def test_429s_never_use_up_the_attempts(
    client: httpx.AsyncClient,
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
) -> None:
    """More 429s than the schedule has attempts, and the row is still delivered."""
    [delivery_id] = add_deliveries(state.engine, "a@example.com")
    storm = [mm_status(429) for _ in range(6)]
    route = any_call(mailmodo).mock(side_effect=[*storm, mm_ok("after-storm")])

    for _ in range(7):
        await deliverer.run_once(10)
        make_due(state.engine)

    row = get_delivery(state.engine, delivery_id)
    assert row.state == State.DELIVERED
    assert row.upstream_ref == "after-storm"
    assert (row.attempts, row.deferrals) == (1, 6)
    attempts = attempts_of(state.engine, delivery_id)
    assert [a.number for a in attempts] == list(range(1, 8))
    assert [a.outcome for a in attempts] == ["rate_limited"] * 6 + ["delivered"]
    assert route.call_count == 7


# --- attempt rows ---------------------------------------------------------------------------


async def test_attempt_rows_record_every_call_in_order(
    client: httpx.AsyncClient,
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
) -> None:
    [delivery_id] = add_deliveries(state.engine, "a@example.com")
    any_call(mailmodo).mock(
        side_effect=[
            mm_status(503, {"message": "maintenance"}),
            mm_status(429, {"message": "slow down"}),
            httpx.ReadTimeout("slow"),
            mm_ok("final-ref"),
        ]
    )

    for _ in range(4):
        await deliverer.run_once(10)
        make_due(state.engine)

    row = get_delivery(state.engine, delivery_id)
    assert row.state == State.DELIVERED
    assert (row.attempts, row.deferrals) == (3, 1)
    attempts = attempts_of(state.engine, delivery_id)
    assert [a.number for a in attempts] == [1, 2, 3, 4]
    assert [a.status_code for a in attempts] == [503, 429, None, 200]
    assert [a.outcome for a in attempts] == ["retry", "rate_limited", "retry", "delivered"]
    assert all(a.worker_id == "test-worker" for a in attempts)
    assert all(a.duration_ms >= 0 for a in attempts)
    assert [a.started_at for a in attempts] == sorted(a.started_at for a in attempts)
    assert attempts[0].error is not None
    assert "maintenance" in attempts[0].error
    assert attempts[2].error is not None
    assert "did not answer in time" in attempts[2].error
    assert attempts[3].error is None


@pytest.mark.parametrize("status", [200, 500])
async def test_huge_response_body_is_kept_truncated_to_2kb(
    client: httpx.AsyncClient,
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
    status: int,
) -> None:
    [delivery_id] = add_deliveries(state.engine, "a@example.com")
    # Multi-byte characters, so truncation must not split one.
    huge = orjson.dumps({"success": True, "ref": "r-1", "junk": "é€" * 5000}).decode()
    any_call(mailmodo).mock(return_value=httpx.Response(status, text=huge))

    await deliverer.run_once(10)

    [attempt] = attempts_of(state.engine, delivery_id)
    assert attempt.response_body is not None
    kept = attempt.response_body.encode()
    assert len(kept) <= MAX_KEPT_BODY
    assert len(kept) >= MAX_KEPT_BODY - 3
    assert huge.startswith(attempt.response_body)
    row = get_delivery(state.engine, delivery_id)
    if status == 200:
        assert row.upstream_ref == "r-1"
    else:
        assert row.reason is not None
        assert len(row.reason.encode()) <= 1000


# --- 401/403: paused upstream ---------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
async def test_rejected_key_pauses_without_burning_attempts(
    client: httpx.AsyncClient,
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
    status: int,
) -> None:
    ids = add_deliveries(state.engine, "a@example.com", "b@example.com")
    any_call(mailmodo).mock(return_value=mm_status(status, {"message": "Invalid apiKey"}))

    stats = await deliverer.run_once(10)

    assert stats.outcomes == {"pending": 2}
    for delivery_id in ids:
        row = get_delivery(state.engine, delivery_id)
        assert row.state == State.PENDING
        assert row.attempts == 0
        assert row.deferrals == 1
        assert row.last_status_code == status
        assert row.reason is not None
        assert "rejected the credentials" in row.reason
        [attempt] = attempts_of(state.engine, delivery_id)
        assert (attempt.outcome, attempt.status_code) == ("auth_error", status)
    paused = upstream_state(state.engine, "mailmodo")
    assert paused is not None
    assert paused.paused is True
    assert paused.reason is not None
    assert f"HTTP {status}" in paused.reason
    assert "Invalid apiKey" in paused.reason
    assert paused.key_fingerprint == fingerprint(MAILMODO_KEY)
    assert paused.probe_at is not None
    assert paused.paused_at is not None
    assert seconds_between(paused.probe_at, paused.paused_at) == pytest.approx(
        state.settings.pause_probe_seconds, abs=0.5
    )


async def test_paused_upstream_claims_nothing_before_the_probe(
    client: httpx.AsyncClient,
    state: BridgeState,
    make_deliverer: DelivererFactory,
    mailmodo: respx.MockRouter,
) -> None:
    deliverer = make_deliverer()
    add_deliveries(state.engine, "a@example.com", "b@example.com")
    route = any_call(mailmodo).mock(return_value=mm_status(401, {"message": "Invalid apiKey"}))
    await deliverer.run_once(10)
    assert route.call_count == 2

    # While paused nothing is claimed, even rows that are due, by any worker with that key.
    make_due(state.engine)
    add_deliveries(state.engine, "c@example.com", target="camp-2")
    assert (await deliverer.run_once(10)).claimed == 0
    assert (await make_deliverer("worker-b").run_once(10)).claimed == 0
    assert route.call_count == 2
    assert all(row.attempts == 0 for row in all_deliveries(state.engine))


async def test_probe_after_pause_sends_one_row_and_success_resumes(
    client: httpx.AsyncClient,
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
    clock: ManualClock,
) -> None:
    ids = add_deliveries(state.engine, "a@example.com", "b@example.com", "c@example.com")
    route = any_call(mailmodo).mock(return_value=mm_status(401))
    await deliverer.run_once(10)
    assert route.call_count == 3

    clock.advance(state.settings.pause_probe_seconds - 5)
    assert (await deliverer.run_once(10)).claimed == 0

    clock.advance(10)  # past probe_at: exactly one row goes as a probe
    route.mock(return_value=mm_ok())
    probe = await deliverer.run_once(10)
    assert probe.claimed == 1
    assert probe.outcomes == {"delivered": 1}
    paused = upstream_state(state.engine, "mailmodo")
    assert paused is not None
    assert paused.paused is False
    assert paused.reason is None
    assert paused.probe_at is None

    rest = await deliverer.run_once(10)
    assert rest.claimed == 2
    for delivery_id in ids:
        row = get_delivery(state.engine, delivery_id)
        assert (row.state, row.attempts, row.deferrals) == (State.DELIVERED, 1, 1)
    assert route.call_count == 6


async def test_probe_rejected_again_keeps_the_pause(
    client: httpx.AsyncClient,
    state: BridgeState,
    make_deliverer: DelivererFactory,
    mailmodo: respx.MockRouter,
    clock: ManualClock,
) -> None:
    deliverer = make_deliverer()
    other = make_deliverer("worker-b")
    add_deliveries(state.engine, "a@example.com", "b@example.com")
    route = any_call(mailmodo).mock(return_value=mm_status(403))
    await deliverer.run_once(10)

    clock.advance(state.settings.pause_probe_seconds + 1)
    probe = await deliverer.run_once(10)
    assert probe.claimed == 1
    # The probe pushed the next one out: another worker does not probe meanwhile.
    assert (await other.run_once(10)).claimed == 0

    paused = upstream_state(state.engine, "mailmodo")
    assert paused is not None
    assert paused.paused is True
    assert paused.probe_at is not None
    assert paused.probe_at > clock.now() + timedelta(seconds=50)
    assert route.call_count == 3
    assert all(row.attempts == 0 for row in all_deliveries(state.engine))
    assert sorted(row.deferrals for row in all_deliveries(state.engine)) == [1, 2]


async def test_new_api_key_clears_the_pause_at_once(
    client: httpx.AsyncClient,
    state: BridgeState,
    make_deliverer: DelivererFactory,
    mailmodo: respx.MockRouter,
    clock: ManualClock,
) -> None:
    old = make_deliverer()
    [first] = add_deliveries(state.engine, "a@example.com")
    route = any_call(mailmodo).mock(return_value=mm_status(401))
    await old.run_once(10)
    paused = upstream_state(state.engine, "mailmodo")
    assert paused is not None
    assert paused.paused

    # The operator fixes the key and restarts: no waiting for the probe.
    new = make_deliverer(mailmodo_api_key="new-key")
    route.mock(return_value=mm_ok())
    [second] = add_deliveries(state.engine, "b@example.com", target="camp-2")

    stats = await new.run_once(10)

    # Lifting the pause makes the row the 401 held back due at once, with the new one.
    assert stats.claimed == 2
    resumed = upstream_state(state.engine, "mailmodo")
    assert resumed is not None
    assert resumed.paused is False
    assert get_delivery(state.engine, first).state == State.DELIVERED
    assert get_delivery(state.engine, second).state == State.DELIVERED
    assert route.calls.last.request.headers["mmApiKey"] == "new-key"
    row = get_delivery(state.engine, first)
    assert (row.state, row.attempts, row.deferrals) == (State.DELIVERED, 1, 1)


async def test_answer_after_pause_other_than_auth_resumes(
    client: httpx.AsyncClient,
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
    clock: ManualClock,
) -> None:
    """A probe that reaches Mailmodo and is not refused (here 400) proves the key works."""
    add_deliveries(state.engine, "a@example.com", "b@example.com")
    route = any_call(mailmodo).mock(return_value=mm_status(401))
    await deliverer.run_once(10)

    clock.advance(state.settings.pause_probe_seconds + 1)
    route.mock(return_value=mm_status(400, {"message": "bad email"}))
    await deliverer.run_once(10)
    resumed = upstream_state(state.engine, "mailmodo")
    assert resumed is not None
    assert resumed.paused is False
    assert (await deliverer.run_once(10)).claimed == 1


# --- leases ---------------------------------------------------------------------------------


async def test_crashed_worker_rows_return_after_the_lease(
    client: httpx.AsyncClient,
    state: BridgeState,
    make_deliverer: DelivererFactory,
    mailmodo: respx.MockRouter,
    clock: ManualClock,
) -> None:
    crashed = make_deliverer("worker-crashed")
    survivor = make_deliverer("worker-survivor")
    ids = add_deliveries(state.engine, "a@example.com", "b@example.com")
    route = any_call(mailmodo).mock(return_value=mm_ok("from-survivor"))

    # The first worker claims, then "crashes": it never calls Mailmodo nor records anything.
    taken = await asyncio.to_thread(crashed.claim, 10)
    assert sorted(c.id for c in taken) == ids
    lease = state.settings.lease_seconds
    for delivery_id in ids:
        row = get_delivery(state.engine, delivery_id)
        assert row.state == State.PENDING
        assert row.leased_by == "worker-crashed"
        assert row.lease_token == taken[0].lease_token
        assert seconds_between(row.next_attempt_at, row.updated_at) == pytest.approx(lease)

    # Before the lease runs out nobody else takes them.
    assert (await survivor.run_once(10)).claimed == 0
    clock.advance(lease - 1)
    assert (await survivor.run_once(10)).claimed == 0
    assert route.call_count == 0

    clock.advance(2)
    retaken = await asyncio.to_thread(survivor.claim, 10)
    assert sorted(c.id for c in retaken) == ids
    assert {c.lease_token for c in retaken}.isdisjoint({c.lease_token for c in taken})
    assert all(c.attempts == 0 for c in retaken)

    # The stale worker wakes up and tries to give the rows back: it no longer can.
    await asyncio.to_thread(crashed.release, taken)
    for delivery_id in ids:
        row = get_delivery(state.engine, delivery_id)
        assert row.leased_by == "worker-survivor"
        assert row.lease_token == retaken[0].lease_token

    for claimed in retaken:
        result = await survivor.deliver(claimed, 0.0)
        assert result is not None
        assert result.state is State.DELIVERED

    # ... nor overwrite the survivor's result with its own.
    late = Outcome(AttemptOutcome.RETRY, status_code=503, reason="late", duration_ms=1.0)
    for claimed in taken:
        with state.engine.begin() as conn:
            change = transitions.after_attempt(claimed, late, clock.now(), crashed.policy)
            assert repository.update_leased(conn, claimed, change) is False
        await asyncio.to_thread(crashed.record, claimed, late)
    for delivery_id in ids:
        row = get_delivery(state.engine, delivery_id)
        assert (row.state, row.upstream_ref, row.attempts) == (
            State.DELIVERED,
            "from-survivor",
            1,
        )
    assert route.call_count == 2


async def test_claim_takes_only_due_rows_up_to_the_limit(
    client: httpx.AsyncClient,
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
) -> None:
    ids = add_deliveries(state.engine, *(f"u{i}@example.com" for i in range(5)))
    any_call(mailmodo).mock(return_value=mm_ok())

    first = await deliverer.run_once(2)
    second = await deliverer.run_once(2)
    third = await deliverer.run_once(2)
    fourth = await deliverer.run_once(2)

    assert [s.claimed for s in (first, second, third, fourth)] == [2, 2, 1, 0]
    assert all(get_delivery(state.engine, i).state == State.DELIVERED for i in ids)


async def test_row_whose_lease_ran_out_while_waiting_for_a_slot_is_not_sent_twice(
    client: httpx.AsyncClient,
    state: BridgeState,
    make_deliverer: DelivererFactory,
    mailmodo: respx.MockRouter,
    clock: ManualClock,
) -> None:
    """A 429 with a Retry-After longer than the lease (up to 6 h is accepted) pushes every
    worker's rate slots past the lease of the rows they have already claimed."""
    slow = make_deliverer("worker-slow")
    fast = make_deliverer("worker-fast")
    [delivery_id] = add_deliveries(state.engine, "a@example.com")
    route = any_call(mailmodo).mock(return_value=mm_ok())

    [claimed] = await asyncio.to_thread(slow.claim, 1)
    waiting = asyncio.create_task(slow.deliver(claimed, clock.epoch() + 0.3))
    await asyncio.sleep(0.05)

    # Meanwhile the lease runs out; another worker takes the row and delivers it.
    clock.advance(state.settings.lease_seconds + 1)
    [again] = await asyncio.to_thread(fast.claim, 1)
    assert again.id == delivery_id
    await fast.deliver(again, 0.0)
    assert route.call_count == 1

    assert await waiting is None  # given back (to nobody: the lease is gone), not sent
    assert route.call_count == 1, "the stale worker sent the row a second time"
    row = get_delivery(state.engine, delivery_id)
    assert (row.state, row.attempts, row.leased_by) == (State.DELIVERED, 1, None)
    assert len(attempts_of(state.engine, delivery_id)) == 1


def _take_back(state: BridgeState, worker_id: str) -> int:
    """What a live worker's sweep does once ``worker_id``'s heartbeat is stale."""
    with state.engine.begin() as conn:
        return leases.reclaim_leases(conn, transitions.reclaim_lease(utcnow()), [worker_id])


async def test_a_row_taken_back_while_its_worker_stalled_is_not_sent(
    state: BridgeState,
    make_deliverer: DelivererFactory,
    mailmodo: respx.MockRouter,
    clock: ManualClock,
) -> None:
    """A worker frozen after its claim (SIGSTOP, a paused container) finds, on waking, that
    the others took its rows back and delivered them: it sends none of them again."""
    stalled = make_deliverer("worker-stalled")
    alive = make_deliverer("worker-alive")
    ids = add_deliveries(state.engine, "a@example.com", "b@example.com")
    route = any_call(mailmodo).mock(return_value=mm_ok())
    claimed = await asyncio.to_thread(stalled.claim, 2)

    # Frozen past the window after which its heartbeat is stale: the others take back.
    clock.advance(recovery.gone_after(state.settings.heartbeat_seconds).total_seconds() + 1)
    assert _take_back(state, "worker-stalled") == 2
    assert (await alive.run_once(10)).outcomes == {"delivered": 2}

    assert [await stalled.deliver(row, 0.0) for row in claimed] == [None, None]
    assert route.call_count == 2, "the stalled worker sent rows it no longer owned"
    for delivery_id in ids:
        row = get_delivery(state.engine, delivery_id)
        assert (row.state, row.attempts) == (State.DELIVERED, 1)
        assert [a.worker_id for a in attempts_of(state.engine, delivery_id)] == ["worker-alive"]


async def test_the_second_call_of_an_attempt_checks_the_lease_after_a_stall(
    state: BridgeState, deliverer: MailmodoDeliverer, clock: ManualClock
) -> None:
    """A list sync reads, then writes: a worker frozen between the two whose row was taken
    back gives the write up instead of sending it on a stale read."""
    add_deliveries(state.engine, "a@example.com", "b@example.com")
    kept, taken = await asyncio.to_thread(deliverer.claim, 2)
    clock.advance(deliverer.fence_after.total_seconds() + 1)
    await deliverer.next_call_slot(kept, None, "the contact write")  # still ours: goes on
    with state.engine.begin() as conn:
        leases.reclaim_leases(conn, transitions.reclaim_lease(utcnow()), [deliverer.worker_id])
    with pytest.raises(GiveBack, match="taken back"):
        await deliverer.next_call_slot(taken, None, "the contact write")


async def test_a_worker_whose_heartbeat_is_late_checks_even_a_fresh_claim(
    state: BridgeState,
    make_deliverer: DelivererFactory,
    mailmodo: respx.MockRouter,
) -> None:
    """The fence also measures from the last committed heartbeat: a row claimed just before a
    stall, while the beat was already late, is checked too."""
    late = make_deliverer("worker-late")
    alive = make_deliverer("worker-alive")
    add_deliveries(state.engine, "a@example.com")
    route = any_call(mailmodo).mock(return_value=mm_ok())
    [claimed] = await asyncio.to_thread(late.claim, 1)
    late.beat_at = utcnow() - late.fence_after - timedelta(seconds=1)

    assert _take_back(state, "worker-late") == 1
    assert (await alive.run_once(10)).outcomes == {"delivered": 1}
    assert await late.deliver(claimed, 0.0) is None
    assert route.call_count == 1


async def test_a_slow_start_with_its_lease_still_held_is_sent(
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
    clock: ManualClock,
) -> None:
    """Past the fence the lease is checked, not presumed lost: still ours, the call goes."""
    [delivery_id] = add_deliveries(state.engine, "a@example.com")
    route = any_call(mailmodo).mock(return_value=mm_ok())
    [claimed] = await asyncio.to_thread(deliverer.claim, 1)

    clock.advance(deliverer.fence_after.total_seconds() + 1)
    assert deliverer.lease_in_doubt(claimed)

    change = await deliverer.deliver(claimed, 0.0)
    assert change is not None
    assert change.state is State.DELIVERED
    assert route.call_count == 1
    assert get_delivery(state.engine, delivery_id).state == State.DELIVERED


async def test_call_that_could_outlast_its_lease_is_not_started(
    client: httpx.AsyncClient,
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
    clock: ManualClock,
) -> None:
    """Less lease left than a whole call (timeout + margin): given back unsent."""
    [delivery_id] = add_deliveries(state.engine, "a@example.com")
    route = any_call(mailmodo).mock(return_value=mm_ok())
    [claimed] = await asyncio.to_thread(deliverer.claim, 1)

    clock.advance(state.settings.lease_seconds - state.settings.mailmodo_timeout_seconds)

    assert await deliverer.deliver(claimed, 0.0) is None
    assert route.call_count == 0
    row = get_delivery(state.engine, delivery_id)
    assert (row.state, row.attempts, row.deferrals) == (State.PENDING, 0, 0)
    assert row.lease_token is None
    assert attempts_of(state.engine, delivery_id) == []
    assert (await deliverer.run_once(10)).outcomes == {"delivered": 1}


@pytest.mark.parametrize(
    ("route", "prefix"),
    [
        ("/clevertap/campaigns/%2E%2E", "/api/v1/triggerCampaign/"),
        ("/clevertap/journeys/%2E/start", "/hooks/start/"),
    ],
    ids=["campaign-dotdot", "journey-dot"],
)
async def test_dot_segment_ids_stay_inside_the_operation_path(
    client: httpx.AsyncClient,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
    route: str,
    prefix: str,
) -> None:
    resp = await client.post(route, json={"email": "a@example.com"}, headers=CT_AUTH)
    if resp.status_code != 200:
        return  # refusing such an id at ingest is a fix too
    mm_route = mailmodo.route().mock(return_value=mm_ok())

    await deliverer.run_once(10)

    assert mm_route.call_count == 1
    assert mm_route.calls.last.request.url.path.startswith(prefix)


def test_a_lease_shorter_than_a_call_is_refused_by_the_settings(tmp_path: Path) -> None:
    """A worker only starts a call its lease outlasts (timeout + 5 s); a shorter lease would
    claim and give back rows forever, so the settings refuse it up front."""
    with pytest.raises(ValidationError, match="BRIDGE_LEASE_SECONDS"):
        make_settings(f"sqlite:///{tmp_path / 'x.db'}", lease_seconds=10.0)
    ok = make_settings(
        f"sqlite:///{tmp_path / 'x.db'}",
        lease_seconds=10.0,
        mailmodo_timeout_seconds=2.0,
        clevertap_timeout_seconds=2.0,
    )
    assert ok.lease_seconds == 10.0
