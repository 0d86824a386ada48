"""The CleverTap uploader against a fake ``/1/upload``: batching, the record format, every
kind of answer (per-record failures included), the pause on 401, and the runner under a burst.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from app import db
from app.clock import ManualClock, utcnow
from app.outbox.models import Delivery, State
from app.state import BridgeState
from app.system import recovery
from app.system.models import UpstreamState
from app.worker.runner import WorkerRunner
from app.worker.upload import CleverTapUploader
from tests.conftest import CLEVERTAP_URL, make_settings
from tests.factories import (
    add_events,
    all_deliveries,
    attempts_of,
    get_delivery,
    make_due,
    upstream_state,
)
from tests.worker.conftest import wait_for
from tests.worker.conftest_upload import (
    ACCOUNT_HEADERS,
    all_sent,
    close_to,
    ct_partial,
    ct_success,
    is_paused,
    opened,
    post_mm,
    running_app,
    sent_records,
    uploader_for,
    wait_until,
)


@pytest.fixture
async def uploader(state: BridgeState) -> AsyncIterator[CleverTapUploader]:
    async with uploader_for(state.engine, state.settings) as built:
        yield built


@pytest.fixture
def upload(clevertap_api: respx.MockRouter) -> respx.Route:
    """The fake ``POST /1/upload``; each test sets its answers."""
    return clevertap_api.post("/1/upload")


def make_events(engine: Engine, n: int, data: dict[str, Any] | None = None) -> list[int]:
    """``n`` opened events for distinct known profiles (``__u<i>``), in id order, written
    directly (not through the Mailmodo callback parser)."""
    ids: list[int] = []
    for i in range(n):
        ids += add_events(engine, f"u{i}@example.com", clevertap_id=f"__u{i}", data=data)
    return ids


def record_for(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "type": "event",
        "evtName": "MM Email Opened",
        "evtData": {},
        "ts": 1700000000,
        "objectId": f"__u{i}",
        **extra,
    }


def states(state: BridgeState) -> list[str]:
    return [d.state for d in all_deliveries(state.engine)]


# --- batching and the wire format ------------------------------------------------------------


async def test_batches_hold_up_to_the_batch_size(
    client: httpx.AsyncClient, state: BridgeState, upload: respx.Route
) -> None:
    upload.mock(side_effect=ct_success)
    ids = make_events(state.engine, 25)
    settings = make_settings(state.settings.database_url, clevertap_batch_size=10)
    async with uploader_for(state.engine, settings) as small:
        claimed = [(await small.run_once()).claimed for _ in range(4)]
    assert claimed == [10, 10, 5, 0]
    sent = all_sent(upload)
    assert [len(records) for records in sent] == [10, 10, 5]
    assert [r for records in sent for r in records] == [record_for(i) for i in range(25)]
    for call in upload.calls:
        request = call.request
        assert request.method == "POST"
        assert str(request.url) == f"{CLEVERTAP_URL}/1/upload"
        assert {k: request.headers[k] for k in ACCOUNT_HEADERS} == ACCOUNT_HEADERS
        assert request.headers["Content-Type"] == "application/json"
    assert states(state) == [State.DELIVERED.value] * 25
    for delivery_id in ids:
        row = get_delivery(state.engine, delivery_id)
        assert (row.attempts, row.last_status_code, row.reason, row.lease_token) == (
            1,
            200,
            None,
            None,
        )
        assert row.finished_at is not None


@pytest.mark.parametrize(
    ("timestamp", "ts"),
    [
        (1700000000, 1700000000),
        (1700000000123, 1700000000),
        ("1700000000", 1700000000),
        ("2023-11-14T22:13:20Z", 1700000000),
        ("2023-11-14T23:13:20+01:00", 1700000000),
    ],
)
async def test_ts_is_sent_in_epoch_seconds(
    client: httpx.AsyncClient,
    uploader: CleverTapUploader,
    upload: respx.Route,
    timestamp: Any,
    ts: int,
) -> None:
    upload.mock(side_effect=ct_success)
    await post_mm(client, opened(clevertap_id="__c", timestamp=timestamp))
    await uploader.run_once()
    [[record]] = all_sent(upload)
    assert record["ts"] == ts
    assert isinstance(record["ts"], int)


@pytest.mark.parametrize("timestamp", [None, 0, -5, "soon"])
async def test_ts_without_a_usable_timestamp_is_the_time_of_arrival(
    client: httpx.AsyncClient, uploader: CleverTapUploader, upload: respx.Route, timestamp: Any
) -> None:
    upload.mock(side_effect=ct_success)
    before = int(time.time())
    body = opened(clevertap_id="__c")
    body["timestamp"] = timestamp
    await post_mm(client, body)
    after = int(time.time())
    await uploader.run_once()
    [[record]] = all_sent(upload)
    assert isinstance(record["ts"], int)
    assert before <= record["ts"] <= after


async def test_success_is_delivered_with_an_attempt(
    client: httpx.AsyncClient, state: BridgeState, uploader: CleverTapUploader, upload: respx.Route
) -> None:
    upload.mock(side_effect=ct_success)
    [delivery_id] = make_events(state.engine, 1, {"Campaign Name": "Welcome"})
    stats = await uploader.run_once()
    assert (stats.claimed, stats.outcomes) == (1, {"delivered": 1})
    [[record]] = all_sent(upload)
    assert record == record_for(0, evtData={"Campaign Name": "Welcome"})
    row = get_delivery(state.engine, delivery_id)
    assert (row.state, row.attempts, row.deferrals) == (State.DELIVERED.value, 1, 0)
    [attempt] = attempts_of(state.engine, delivery_id)
    assert (attempt.number, attempt.outcome, attempt.status_code, attempt.worker_id) == (
        1,
        "delivered",
        200,
        "w",
    )


async def test_answers_wait_in_memory_while_the_database_cannot_write_them(
    state: BridgeState,
    uploader: CleverTapUploader,
    upload: respx.Route,
    monkeypatch: pytest.MonkeyPatch,
    clock: ManualClock,
) -> None:
    """Uploaded, then the database fails the write of the answers twice: written on the third
    try, the batch uploaded once (dropping them left the rows leased, then uploaded again),
    its attempts dated when the answer came, not when the database took them."""
    monkeypatch.setattr(db, "RETRY_SECONDS", 0.01)
    upload.mock(side_effect=ct_success)
    ids = make_events(state.engine, 3)
    record = uploader.record
    failures: list[int] = []
    answered_by: list[datetime] = []

    def flaky(results: Any, answered: datetime | None = None) -> Any:
        if len(failures) < 2:
            failures.append(len(results))
            answered_by[:] = answered_by or [utcnow()]
            clock.advance(30)
            raise OperationalError("COMMIT", None, sqlite3.OperationalError("disk is full"))
        return record(results, answered)

    monkeypatch.setattr(uploader, "record", flaky)
    stats = await uploader.run_once()
    assert stats.outcomes == {"delivered": 3}
    assert failures == [3, 3]
    assert upload.call_count == 1
    for delivery_id in ids:
        assert get_delivery(state.engine, delivery_id).state == State.DELIVERED.value
        [attempt] = attempts_of(state.engine, delivery_id)
        assert attempt.started_at <= answered_by[0]  # not 60 s of outage later


async def test_a_stop_while_the_answers_wait_does_not_give_the_batch_back_as_unsent(
    state: BridgeState,
    uploader: CleverTapUploader,
    upload: respx.Route,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Uploaded, then stopped while the database cannot take the answers: the rows are not
    released as unsent (they were sent: due again at once, with no attempt on record); they
    stay leased and come back after the lease, as a gone worker's would."""
    monkeypatch.setattr(db, "RETRY_SECONDS", 0.01)
    upload.mock(side_effect=ct_success)
    make_events(state.engine, 2)
    tries: list[int] = []
    released: list[int] = []

    def down(results: Any, answered: Any = None) -> Any:
        tries.append(len(results))
        raise OperationalError("COMMIT", None, sqlite3.OperationalError("disk is full"))

    monkeypatch.setattr(uploader, "record", down)
    monkeypatch.setattr(uploader, "release", lambda rows: released.extend(r.id for r in rows))
    rows = await asyncio.to_thread(uploader.claim, 10)
    task = asyncio.create_task(uploader.upload(rows))
    await wait_for(lambda: len(tries) >= 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert upload.call_count == 1
    assert released == []
    assert {d.lease_token is not None for d in all_deliveries(state.engine)} == {True}


async def test_an_error_in_what_is_written_is_not_retried(
    uploader: CleverTapUploader, upload: respx.Route, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload.mock(side_effect=ct_success)
    make_events(uploader.engine, 1)
    calls: list[int] = []

    def broken(results: Any) -> Any:
        calls.append(1)
        raise ValueError("a fault in the code, not the database")

    monkeypatch.setattr(uploader, "record", broken)
    with pytest.raises(ValueError, match="a fault"):
        await uploader.run_once()
    assert calls == [1]


async def test_rows_taken_back_while_the_uploader_stalled_are_not_uploaded(
    state: BridgeState, upload: respx.Route, clock: ManualClock
) -> None:
    """Claimed, then frozen past the heartbeat window: the rows another worker took back (and
    uploaded) are not uploaded again; the one still held goes."""
    upload.mock(side_effect=ct_success)
    ids = make_events(state.engine, 3)
    async with (
        uploader_for(state.engine, state.settings, "stalled") as stalled,
        uploader_for(state.engine, state.settings, "alive") as alive,
    ):
        rows = await asyncio.to_thread(stalled.claim)
        assert [r.id for r in rows] == ids
        clock.advance(recovery.gone_after(state.settings.heartbeat_seconds).total_seconds() + 1)
        # Another worker's sweep takes two of them back and uploads them.
        with state.engine.begin() as conn:
            conn.execute(
                update(Delivery)
                .where(Delivery.id.in_(ids[:2]))
                .values(
                    state=State.PENDING.value,
                    lease_token=None,
                    leased_by=None,
                    next_attempt_at=utcnow(),
                )
            )
        assert (await alive.run_once()).outcomes == {"delivered": 2}

        changes = await stalled.upload(rows)

    assert [c.state for c in changes] == [State.DELIVERED]
    sent = [record["objectId"] for batch in all_sent(upload) for record in batch]
    assert sorted(sent) == ["__u0", "__u1", "__u2"], "a taken-back row was uploaded twice"
    for delivery_id in ids:
        assert len(attempts_of(state.engine, delivery_id)) == 1


# --- per-record answers ----------------------------------------------------------------------

ERROR_509 = "Event Name is incorrect. ErrorCode: 509 - Event name is mandatory."


async def test_partial_answer_fails_the_skipped_record_for_good(
    client: httpx.AsyncClient, state: BridgeState, uploader: CleverTapUploader, upload: respx.Route
) -> None:
    upload.mock(side_effect=ct_partial({2: (509, ERROR_509)}))
    ids = make_events(state.engine, 3)
    stats = await uploader.run_once()
    assert stats.outcomes == {"delivered": 2, "failed": 1}
    assert states(state) == ["delivered", "failed", "delivered"]
    bad = get_delivery(state.engine, ids[1])
    assert bad.attempts == 1
    assert bad.finished_at is not None
    assert bad.reason == (
        f"CleverTap skipped the record: 509: {ERROR_509} Skipped record number : 2"
    )
    [attempt] = attempts_of(state.engine, ids[1])
    assert attempt.outcome == "failed"
    assert attempt.response_body is not None
    assert '"code":509' in attempt.response_body
    assert '"objectId":"__u1"' in attempt.response_body
    # The invalid record is never sent again.
    make_due(state.engine)
    assert (await uploader.run_once()).claimed == 0
    assert upload.call_count == 1


async def test_skipped_record_is_matched_by_its_echo_without_a_record_number(
    client: httpx.AsyncClient, state: BridgeState, uploader: CleverTapUploader, upload: respx.Route
) -> None:
    upload.mock(side_effect=ct_partial({3: (526, "Invalid objectId")}, number_in_error=False))
    make_events(state.engine, 4)
    await uploader.run_once()
    assert states(state) == ["delivered", "delivered", "failed", "delivered"]
    assert all_deliveries(state.engine)[2].reason == (
        "CleverTap skipped the record: 526: Invalid objectId"
    )


async def test_several_skipped_records_in_one_answer(
    client: httpx.AsyncClient, state: BridgeState, uploader: CleverTapUploader, upload: respx.Route
) -> None:
    upload.mock(
        side_effect=ct_partial({1: (522, "Too many properties."), 4: (555, "Server error.")})
    )
    make_events(state.engine, 5)
    await uploader.run_once()
    rows = all_deliveries(state.engine)
    assert [(r.state, r.attempts) for r in rows] == [
        ("failed", 1),
        ("delivered", 1),
        ("delivered", 1),
        ("pending", 1),
        ("delivered", 1),
    ]


async def test_code_555_retries_only_that_record(
    client: httpx.AsyncClient, state: BridgeState, uploader: CleverTapUploader, upload: respx.Route
) -> None:
    first = ct_partial({2: (555, "Something went wrong.")})
    upload.mock(side_effect=lambda request: (first if not upload.calls else ct_success)(request))
    ids = make_events(state.engine, 3)
    started = utcnow()
    await uploader.run_once()
    retried = get_delivery(state.engine, ids[1])
    assert (retried.state, retried.attempts, retried.finished_at) == ("pending", 1, None)
    assert retried.reason is not None
    assert retried.reason.startswith("CleverTap skipped the record: 555: ")
    # First retry after the first delay of the schedule (1 s here, with jitter).
    assert started + timedelta(seconds=0.7) <= retried.next_attempt_at
    assert retried.next_attempt_at <= utcnow() + timedelta(seconds=1.3)
    assert (await uploader.run_once()).claimed == 0  # not due yet

    make_due(state.engine)
    assert (await uploader.run_once()).claimed == 1
    assert [len(r) for r in all_sent(upload)] == [3, 1]
    assert all_sent(upload)[1] == [record_for(1)]
    row = get_delivery(state.engine, ids[1])
    assert (row.state, row.attempts, row.reason) == ("delivered", 2, None)
    assert [a.outcome for a in attempts_of(state.engine, ids[1])] == ["retry", "delivered"]


async def test_a_record_that_keeps_failing_ends_dead_and_is_not_sent_again(
    client: httpx.AsyncClient, state: BridgeState, uploader: CleverTapUploader, upload: respx.Route
) -> None:
    """555 every time: retried along the schedule (3 delays here), then dead; its neighbours
    are delivered meanwhile and never held back."""
    upload.mock(side_effect=ct_partial({1: (555, "Server error.")}))
    ids = make_events(state.engine, 2)
    for _ in range(6):
        await uploader.run_once()
        make_due(state.engine)
    sent = all_sent(upload)
    assert [len(records) for records in sent] == [2, 1, 1, 1]
    row = get_delivery(state.engine, ids[0])
    assert (row.state, row.attempts) == (State.DEAD.value, 4)
    assert row.reason is not None
    assert row.reason.startswith("gave up after 4 attempts; last: CleverTap skipped the record")
    assert get_delivery(state.engine, ids[1]).state == State.DELIVERED.value


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, text="<html>gateway</html>"),
        httpx.Response(200, json=["unexpected"]),
        httpx.Response(200, json={"status": "fail", "processed": 0, "unprocessed": []}),
    ],
    ids=["not-json", "not-an-object", "processed-nothing"],
)
async def test_a_200_answer_we_cannot_read_is_retried(
    client: httpx.AsyncClient,
    state: BridgeState,
    uploader: CleverTapUploader,
    upload: respx.Route,
    answer: httpx.Response,
) -> None:
    upload.mock(return_value=answer)
    make_events(state.engine, 2)
    await uploader.run_once()
    assert [(d.state, d.attempts) for d in all_deliveries(state.engine)] == [("pending", 1)] * 2


# --- whole-request answers -------------------------------------------------------------------


async def test_429_defers_everything_without_using_an_attempt(
    client: httpx.AsyncClient, state: BridgeState, uploader: CleverTapUploader, upload: respx.Route
) -> None:
    upload.mock(return_value=httpx.Response(429, text="Too many concurrent requests"))
    ids = make_events(state.engine, 3)
    before = utcnow()
    stats = await uploader.run_once()
    assert stats.outcomes == {"pending": 3}
    for delivery_id in ids:
        row = get_delivery(state.engine, delivery_id)
        assert (row.state, row.attempts, row.deferrals, row.last_status_code) == (
            "pending",
            0,
            1,
            429,
        )
        assert row.reason == "CleverTap throttled: HTTP 429: Too many concurrent requests"
        assert row.next_attempt_at > before
        assert [a.outcome for a in attempts_of(state.engine, delivery_id)] == ["rate_limited"]
    assert not is_paused(state.engine)


async def test_429_honours_retry_after(
    client: httpx.AsyncClient, state: BridgeState, uploader: CleverTapUploader, upload: respx.Route
) -> None:
    upload.mock(return_value=httpx.Response(429, headers={"Retry-After": "120"}))
    [delivery_id] = make_events(state.engine, 1)
    await uploader.run_once()
    row = get_delivery(state.engine, delivery_id)
    assert close_to(row.next_attempt_at, utcnow() + timedelta(seconds=120), seconds=5)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (httpx.Response(500, text="oops"), "CleverTap unavailable: HTTP 500: oops"),
        (
            httpx.Response(503, json={"status": "fail", "error": "Service Unavailable"}),
            "CleverTap unavailable: HTTP 503: Service Unavailable",
        ),
        (httpx.ReadTimeout("read timed out"), "CleverTap did not answer in time: timeout"),
        (httpx.ConnectError("connection refused"), "CleverTap unreachable: ConnectError"),
    ],
    ids=["500", "503", "timeout", "unreachable"],
)
async def test_server_errors_and_timeouts_are_retried_with_an_attempt(
    client: httpx.AsyncClient,
    state: BridgeState,
    uploader: CleverTapUploader,
    upload: respx.Route,
    answer: httpx.Response | Exception,
    reason: str,
) -> None:
    if isinstance(answer, Exception):
        upload.mock(side_effect=answer)
    else:
        upload.mock(return_value=answer)
    ids = make_events(state.engine, 2)
    before = utcnow()
    await uploader.run_once()
    for delivery_id in ids:
        row = get_delivery(state.engine, delivery_id)
        assert (row.state, row.attempts, row.deferrals, row.finished_at) == ("pending", 1, 0, None)
        assert row.reason is not None
        assert row.reason.startswith(reason), row.reason
        assert row.next_attempt_at >= before + timedelta(seconds=0.7)
        assert [a.outcome for a in attempts_of(state.engine, delivery_id)] == ["retry"]
    # Once due, the same records go again, together.
    upload.mock(side_effect=ct_success)
    make_due(state.engine)
    await uploader.run_once()
    assert states(state) == ["delivered", "delivered"]
    assert all_sent(upload)[-1] == [record_for(0), record_for(1)]


async def test_400_is_bisected_and_fails_only_what_it_refuses_for_good(
    client: httpx.AsyncClient, state: BridgeState, uploader: CleverTapUploader, upload: respx.Route
) -> None:
    upload.mock(
        return_value=httpx.Response(
            400, json={"status": "fail", "error": "Malformed request", "code": 400}
        )
    )
    ids = make_events(state.engine, 2)
    await uploader.run_once()
    for delivery_id in ids:
        row = get_delivery(state.engine, delivery_id)
        assert (row.state, row.attempts, row.last_status_code) == ("failed", 1, 400)
        assert row.reason == "CleverTap refused: HTTP 400: Malformed request"
    # the pair, then each record alone
    assert [len(batch) for batch in all_sent(upload)] == [2, 1, 1]
    make_due(state.engine)
    assert (await uploader.run_once()).claimed == 0
    assert upload.call_count == 3


async def test_one_refused_record_does_not_take_its_batch_down(
    client: httpx.AsyncClient, state: BridgeState, uploader: CleverTapUploader, upload: respx.Route
) -> None:
    """CleverTap refusing a whole request (400/413) because of one record: halves are resent
    until the bad record stands alone; every other record is delivered."""
    bad = record_for(2)

    def answer(request: httpx.Request) -> httpx.Response:
        records = json.loads(request.content)["d"]
        if bad in records:
            return httpx.Response(400, json={"status": "fail", "error": "Malformed request"})
        return httpx.Response(
            200, json={"status": "success", "processed": len(records), "unprocessed": []}
        )

    upload.mock(side_effect=answer)
    ids = make_events(state.engine, 8)
    await uploader.run_once()
    states = [get_delivery(state.engine, i).state for i in ids]
    assert states == ["delivered"] * 2 + ["failed"] + ["delivered"] * 5
    assert upload.call_count <= 1 + 2 * 3  # log2(8) levels, two halves each


# --- 401: pause ------------------------------------------------------------------------------


def set_probe_due(state: BridgeState) -> None:
    with state.engine.begin() as conn:
        conn.execute(
            update(UpstreamState)
            .where(UpstreamState.upstream == "clevertap")
            .values(probe_at=utcnow() - timedelta(seconds=1))
        )


async def test_401_pauses_clevertap_until_a_probe_succeeds(
    client: httpx.AsyncClient, state: BridgeState, uploader: CleverTapUploader, upload: respx.Route
) -> None:
    upload.mock(
        return_value=httpx.Response(
            401, json={"status": "fail", "error": "Account ID is not valid", "code": 401}
        )
    )
    ids = make_events(state.engine, 3)
    await uploader.run_once()

    paused = upstream_state(state.engine, "clevertap")
    assert paused is not None
    assert paused.paused is True
    assert paused.reason == (
        "CleverTap rejected the credentials: HTTP 401: Account ID is not valid"
    )
    for delivery_id in ids:
        row = get_delivery(state.engine, delivery_id)
        assert (row.state, row.attempts, row.deferrals, row.last_status_code) == (
            "pending",
            0,
            1,
            401,
        )
        assert [a.outcome for a in attempts_of(state.engine, delivery_id)] == ["auth_error"]

    # While paused nothing is claimed, even rows that are due, and nothing is sent.
    make_due(state.engine)
    add_events(state.engine, "late@example.com", clevertap_id="__late")  # new, due now
    for _ in range(3):
        assert (await uploader.run_once()).claimed == 0
    assert upload.call_count == 1

    # The probe: one record when the probe is due; a real answer resumes everything.
    upload.mock(side_effect=ct_success)
    set_probe_due(state)
    assert (await uploader.run_once()).claimed == 1
    resumed = upstream_state(state.engine, "clevertap")
    assert resumed is not None
    assert resumed.paused is False
    assert (await uploader.run_once()).claimed == 3
    assert states(state) == ["delivered"] * 4
    assert [len(r) for r in all_sent(upload)] == [3, 1, 3]
    for delivery_id in ids:
        assert get_delivery(state.engine, delivery_id).attempts == 1


async def test_a_failed_probe_keeps_the_pause(
    client: httpx.AsyncClient, state: BridgeState, uploader: CleverTapUploader, upload: respx.Route
) -> None:
    upload.mock(return_value=httpx.Response(401, json={"error": "Account ID is not valid"}))
    make_events(state.engine, 2)
    await uploader.run_once()
    make_due(state.engine)
    set_probe_due(state)
    assert (await uploader.run_once()).claimed == 1
    assert is_paused(state.engine)
    assert (await uploader.run_once()).claimed == 0
    assert [a.number for a in attempts_of(state.engine, all_deliveries(state.engine)[0].id)] == [
        1,
        2,
    ]
    assert [d.attempts for d in all_deliveries(state.engine)] == [0, 0]


async def test_new_credentials_lift_the_pause(
    client: httpx.AsyncClient, state: BridgeState, uploader: CleverTapUploader, upload: respx.Route
) -> None:
    upload.mock(return_value=httpx.Response(401, json={"error": "Account ID is not valid"}))
    make_events(state.engine, 2)
    await uploader.run_once()
    make_due(state.engine)
    upload.mock(side_effect=ct_success)
    fixed = state.settings.model_copy(update={"clevertap_passcode": "NEW-PASSCODE"})
    async with uploader_for(state.engine, fixed) as renewed:
        assert (await renewed.run_once()).claimed == 2
    assert upload.calls[-1].request.headers["X-CleverTap-Passcode"] == "NEW-PASSCODE"
    assert not is_paused(state.engine)
    assert states(state) == ["delivered"] * 2


# --- the runner ------------------------------------------------------------------------------


async def test_embedded_runner_sends_a_burst_in_full_batches(
    sqlite_url: str, upload: respx.Route
) -> None:
    upload.mock(side_effect=ct_success)
    settings = make_settings(sqlite_url, embedded_worker=True, clevertap_linger_ms=50)
    assert settings.clevertap_batch_size == 1000
    async with running_app(settings) as (client, state):
        assert isinstance(state.runner, WorkerRunner)
        assert state.runner.clevertap is not None
        bodies = [
            opened(f"b{i}@example.com", clevertap_id=f"__b{i}", event_id=f"burst-{i}")
            for i in range(300)
        ]
        answers = await asyncio.gather(*(post_mm(client, body) for body in bodies))
        assert sum(a["accepted"] for a in answers) == 300

        assert await wait_until(lambda: states(state) == [State.DELIVERED.value] * 300)

        sent = all_sent(upload)
        assert sum(len(records) for records in sent) == 300
        assert len(sent) <= 3, [len(records) for records in sent]
        assert sorted(r["objectId"] for records in sent for r in records) == sorted(
            f"__b{i}" for i in range(300)
        )

        ready = await client.get("/readyz")
        checks = ready.json()["checks"]
        assert checks["clevertap"] == {"ok": True, "configured": True}
        assert checks["worker"]["ok"] is True
        assert ready.status_code == 200, ready.json()
        assert ready.json()["status"] == "ready"


async def test_runner_keeps_full_batches_going_without_lingering(
    sqlite_url: str, upload: respx.Route
) -> None:
    """More than a batch waiting: full batches go back to back, the remainder after."""
    seen: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(len(sent_records(request)))
        return ct_success(request)

    upload.mock(side_effect=answer)
    settings = make_settings(
        sqlite_url, embedded_worker=True, clevertap_linger_ms=50, clevertap_batch_size=40
    )
    async with running_app(settings) as (client, state):
        body = [
            opened(f"m{i}@example.com", clevertap_id=f"__m{i}", event_id=f"m-{i}")
            for i in range(100)
        ]
        assert (await post_mm(client, body))["accepted"] == 100
        assert await wait_until(lambda: states(state) == [State.DELIVERED.value] * 100)
    assert seen == [40, 40, 20]


# --- the same on PostgreSQL ------------------------------------------------------------------


async def test_batches_partial_answers_and_pause_on_every_backend(
    database_url: str, upload: respx.Route
) -> None:
    async with running_app(make_settings(database_url, clevertap_batch_size=3)) as (_client, state):
        ids = make_events(state.engine, 5)
        async with uploader_for(state.engine, state.settings) as uploader:
            upload.mock(side_effect=ct_partial({2: (509, ERROR_509), 3: (555, "Busy.")}))
            assert (await uploader.run_once()).claimed == 3
            upload.mock(return_value=httpx.Response(401, json={"error": "Account ID is not valid"}))
            assert (await uploader.run_once()).claimed == 2
            make_due(state.engine)
            assert (await uploader.run_once()).claimed == 0
        assert [len(r) for r in all_sent(upload)] == [3, 2]
        assert [(r.state, r.attempts, r.deferrals) for r in all_deliveries(state.engine)] == [
            ("delivered", 1, 0),
            ("failed", 1, 0),
            ("pending", 1, 0),
            ("pending", 0, 1),
            ("pending", 0, 1),
        ]
        assert [r.id for r in all_deliveries(state.engine)] == ids
        paused = upstream_state(state.engine, "clevertap")
        assert paused is not None
        assert paused.paused is True


async def test_runner_keeps_at_most_max_concurrency_uploads_in_flight(
    sqlite_url: str, upload: respx.Route
) -> None:
    in_flight = 0
    peak = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.2)
        in_flight -= 1
        return ct_success(request)

    upload.mock(side_effect=slow)
    settings = make_settings(
        sqlite_url,
        embedded_worker=True,
        clevertap_linger_ms=0,
        clevertap_batch_size=5,
        clevertap_max_concurrency=2,
    )
    async with running_app(settings) as (client, state):
        body = [
            opened(f"c{i}@example.com", clevertap_id=f"__c{i}", event_id=f"c-{i}")
            for i in range(40)
        ]
        await post_mm(client, body)
        assert await wait_until(lambda: states(state) == [State.DELIVERED.value] * 40)
    assert [len(r) for r in all_sent(upload)] == [5] * 8
    assert peak == 2


async def test_shutdown_gives_a_batch_in_flight_back_unsent(
    sqlite_url: str, upload: respx.Route
) -> None:
    """A request still in flight after the grace period is cancelled; its rows are released
    at once (no attempt used, no lease left) rather than waiting for the lease to run out."""
    started = asyncio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        started.set()
        await asyncio.sleep(30)
        return ct_success(request)

    upload.mock(side_effect=hang)
    settings = make_settings(
        sqlite_url, embedded_worker=True, clevertap_linger_ms=0, shutdown_grace_seconds=0.2
    )
    begun = time.monotonic()
    async with running_app(settings) as (_client, state):
        ids = make_events(state.engine, 3)
        await asyncio.wait_for(started.wait(), 10)
        engine = state.engine
    assert time.monotonic() - begun < 10
    rows = all_deliveries(engine)
    assert [r.id for r in rows] == ids
    assert [(r.state, r.attempts, r.deferrals, r.lease_token) for r in rows] == [
        ("pending", 0, 0, None)
    ] * 3
    assert all(r.next_attempt_at <= utcnow() for r in rows)
    assert all(attempts_of(engine, i) == [] for i in ids)
