"""``POST /mailmodo/{secret}/events[/{event}]`` over the real app: authentication, every payload
kind down to the outbox rows it creates, and the error answers (with rejected calls kept)."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from app.clock import utcnow
from app.mailmodo.source import normalise_event_type
from app.main import BridgeApp
from app.outbox.models import CallStatus, State
from app.state import BridgeState
from tests.conftest import CT_SECRET, MM_SECRET, _reset_postgres, make_settings
from tests.factories import (
    all_calls,
    all_deliveries,
    payload_of,
)
from tests.worker.conftest_upload import (
    events_path,
    opened,
    post_mm,
    running_app,
)

CT_ID = "__g09c9bf3b0d374a259c86f5b855ec9b19"

#: mailmodo.md §5.1 (after a campaign card), with a real address and a CleverTap ID in data.
JOURNEY_CARD: dict[str, Any] = {
    "eventData": {"type": "html"},
    "triggerData": {
        "data": {"clevertap_id": "__journey-ct"},
        "triggerSource": "CsvList",
        "email": "gou@mailmodo.com",
        "userId": "cc56708d-1111-4fea-8c07-a4bfa5a7b79b",
        "journeyId": "5d31c2b4-2222-4a84-acd3-834cae80231b",
        "eventProperty": {},
    },
    "lastCampaignEmailRef": "064c76e7-3333-4780-a001-226c066aaa12",
    "lastCampaignId": "31422f76-4444-4a72-a630-dd6f9f615bc3",
}

#: mailmodo.md §5.2 verbatim, plus a CleverTap ID in recipientData.
FORM_WEBHOOK: dict[str, Any] = {
    "fuuid": "98255",
    "next-step-id": "success",
    "total-steps": "3",
    "responseId": "ad20a980-4fce-44b6-887d-2236df514a76",
    "recipientEmail": "test@rudderstack.com",
    "formId": "formosztd5",
    "recordedAt": {"ts": 1662695887, "date": "2022-09-09", "hour": 9, "minute": 28},
    "submissionSource": "amp",
    "elementjbtz42": "peace",
    "element8jzo13": ["Useful"],
    "recipientData": {
        "email": "test@rudderstack.com",
        "first_name": "abcda",
        "clevertap_id": "__form-ct",
    },
    "recommend": "1",
    "liking": "downvote",
    "satisfaction": "1",
    "campaignId": "0b53e1bf-84ae-4198-9184-8a4d6e1fa3dd",
    "campaignName": "Campaign-testing",
}


def event_rows(state: BridgeState) -> list[dict[str, Any]]:
    """The outbox rows as the fields these tests compare."""
    return [
        {
            "upstream": d.upstream,
            "operation": d.operation,
            "direction": d.direction,
            "target": d.target,
            "email": d.email,
            "clevertap_id": d.clevertap_id,
            "state": d.state,
            "attempts": d.attempts,
            "payload": payload_of(d),
        }
        for d in all_deliveries(state.engine)
    ]


def mm_row(email: str, clevertap_id: str | None, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "upstream": "clevertap",
        "operation": "event.upload",
        "direction": "mailmodo_to_clevertap",
        "target": body["evtName"],
        "email": email,
        "clevertap_id": clevertap_id,
        "state": State.PENDING.value,
        "attempts": 0,
        "payload": body,
    }


def assert_nothing_stored(state: BridgeState) -> None:
    assert all_calls(state.engine) == []
    assert all_deliveries(state.engine) == []


# --- authentication --------------------------------------------------------------------------


@pytest.mark.parametrize("event", [None, "opened"])
@pytest.mark.parametrize(
    "secret", ["wrong", CT_SECRET, MM_SECRET[:-1], MM_SECRET + "x", MM_SECRET.upper()]
)
async def test_wrong_secret_is_401_and_nothing_is_stored(
    client: httpx.AsyncClient, state: BridgeState, secret: str, event: str | None
) -> None:
    resp = await client.post(events_path(event, secret), json=opened(clevertap_id=CT_ID))
    assert resp.status_code == 401
    assert resp.json()["error"] == "unauthorized"
    assert "WWW-Authenticate" in resp.headers
    assert_nothing_stored(state)


@pytest.mark.parametrize(
    "path",
    [
        "/mailmodo/events",
        "/mailmodo/events/opened",
        "/mailmodo//events",
        "/mailmodo//events/opened",
    ],
)
async def test_a_path_without_its_secret_is_401_not_404(
    client: httpx.AsyncClient, state: BridgeState, path: str
) -> None:
    """The URL pasted without its secret segment is a missing secret, not an unknown route."""
    resp = await client.post(path, json=opened(clevertap_id=CT_ID))
    assert resp.status_code == 401
    assert resp.json()["error"] == "unauthorized"
    assert_nothing_stored(state)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (f"/mailmodo/{MM_SECRET}/events/", 200),
        (f"/mailmodo/{MM_SECRET}/events/opened/", 200),
        ("/mailmodo/anything/events/", 401),
        ("/clevertap/campaigns/c/", 401),  # no CleverTap credentials here
        ("/admin/deliveries/", 404),
    ],
)
async def test_a_trailing_slash_is_never_redirected(
    client: httpx.AsyncClient, state: BridgeState, path: str, status: int
) -> None:
    """No 307 to a URL built from the Host header (a sender following it would resend its
    secret there, in plain HTTP behind a TLS proxy): a webhook URL pasted with a trailing
    slash is served as without it, any other path with one is a 404."""
    resp = await client.post(
        path, json=opened(clevertap_id=CT_ID), headers={"Host": "evil.example"}
    )
    assert resp.status_code == status, resp.text
    assert "location" not in resp.headers
    if status != 200:
        assert_nothing_stored(state)


async def test_a_path_of_many_trailing_slashes_is_looked_up_once_more_not_per_slash(
    app: BridgeApp, client: httpx.AsyncClient, state: BridgeState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thousands of trailing slashes (before authentication) cost two look-ups, not one per
    slash: a look-up per slash held the event loop for seconds."""
    dispatch = app.dispatch
    lookups: list[str] = []
    lookup = dispatch._lookup

    def counted(method: str, path: str) -> Any:
        lookups.append(path)
        return lookup(method, path)

    monkeypatch.setattr(dispatch, "_lookup", counted)
    resp = await client.post("/mailmodo/" + "x" * 2000 + "/events" + "/" * 16000, json={})
    assert resp.status_code == 401
    assert len(lookups) == 2
    assert_nothing_stored(state)


async def test_wrong_secret_is_401_before_the_body_is_read(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    """Even a body that would be a 400 or 415 gets 401 and is not kept."""
    resp = await client.post(
        events_path(secret="nope"), content=b"{not json", headers={"Content-Type": "text/plain"}
    )
    assert resp.status_code == 401
    assert_nothing_stored(state)


async def test_the_secret_may_not_come_as_a_header(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    resp = await client.post(
        "/mailmodo/x/events",
        json=opened(clevertap_id=CT_ID),
        headers={"X-Bridge-Secret": MM_SECRET},
    )
    assert resp.status_code == 401
    assert_nothing_stored(state)


# --- activity events -------------------------------------------------------------------------


async def test_activity_event_is_stored_as_one_clevertap_event(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    body = {
        "event": "Email Opened",
        "email": "Ann@Example.com",
        "clevertap_id": CT_ID,
        "timestamp": 1662695704000,  # milliseconds
        "event_id": "evt-1",
        "campaign_name": "Welcome",
        "campaign_type": "TRIGGERED",
        "email_subject": "Hello there",
        "template_name": "Welcome v2",
        "apple_privacy_open": True,
    }
    raw = json.dumps(body).encode()
    resp = await client.post(
        events_path(),
        content=raw,
        headers={"Content-Type": "application/json", "X-Request-ID": "req-42"},
    )
    assert resp.status_code == 200, resp.text
    rows = all_deliveries(state.engine)
    assert resp.json() == {"accepted": 1, "duplicates": 0, "skipped": 0, "ids": [rows[0].id]}
    assert event_rows(state) == [
        mm_row(
            "ann@example.com",
            CT_ID,
            {
                "evtName": "MM Email Opened",
                "evtData": {
                    "Campaign Name": "Welcome",
                    "Campaign Type": "TRIGGERED",
                    "Subject": "Hello there",
                    "Template Name": "Welcome v2",
                    "Apple Privacy Open": True,
                },
                "ts": 1662695704,
            },
        )
    ]
    [call] = all_calls(state.engine)
    assert (call.source, call.route, call.target) == ("mailmodo", "mailmodo.events", None)
    assert (call.status, call.http_status, call.item_count) == (CallStatus.ACCEPTED.value, 200, 1)
    assert call.body == raw.decode()
    assert call.dedup_key == "mailmodo.events:id:evt-1"
    assert call.request_id == "req-42"
    assert rows[0].inbound_call_id == call.id


@pytest.mark.parametrize(
    ("event", "name"),
    [
        ("opened", "MM Email Opened"),
        ("clicked", "MM Email Link Clicked"),
        ("bounced", "MM Email Bounced"),
        ("unsubscribed", "MM Email Unsubscribed"),
        ("spam", "MM Email Marked as Spam"),
        ("Link Clicked", "MM Email Link Clicked"),
        ("MM Email Marked as Spam", "MM Email Marked as Spam"),
    ],
)
async def test_each_activity_event_type_on_both_routes(
    client: httpx.AsyncClient, state: BridgeState, event: str, name: str
) -> None:
    """The type comes from ``event`` in the body, or from the path (which then wins)."""
    in_body = {"event": event, "email": "a@example.com", "clevertap_id": CT_ID, "ts": 1700000000}
    await post_mm(client, in_body)
    path_only = {"email": "a@example.com", "clevertap_id": CT_ID, "ts": 1700000001}
    await post_mm(client, path_only, event)
    overridden = {**in_body, "event": "bounced", "ts": 1700000002}
    await post_mm(client, overridden, event)
    # (Opt-outs also carry MSG-email false to CleverTap: tests/consent/.)
    rows = [r for r in all_deliveries(state.engine) if r.operation == "event.upload"]
    assert [r.target for r in rows] == [name, name, name]
    assert [payload_of(r)["evtName"] for r in rows] == [name, name, name]
    assert [payload_of(r)["ts"] for r in rows] == [1700000000, 1700000001, 1700000002]
    # The call records the event the path named (as given or normalised).
    targets = [c.target for c in all_calls(state.engine)]
    assert targets[0] is None
    assert [normalise_event_type(t or "") for t in targets[1:]] == [normalise_event_type(event)] * 2


async def test_activity_event_without_timestamp_uses_the_time_of_arrival(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    before = int(utcnow().timestamp())
    await post_mm(client, {"event": "clicked", "email": "a@example.com", "link_url": "https://x"})
    after = int(utcnow().timestamp())
    [row] = all_deliveries(state.engine)
    ts = payload_of(row)["ts"]
    assert isinstance(ts, int)
    assert before <= ts <= after
    assert payload_of(row)["evtData"] == {"Link URL": "https://x"}


async def test_an_array_of_activity_events(client: httpx.AsyncClient, state: BridgeState) -> None:
    body = [
        opened("a@example.com", clevertap_id="__a", event_id="e1"),
        {"event": "bounced", "email": "b@example.com", "clevertap_id": "__b", "event_id": "e2"},
    ]
    answer = await post_mm(client, body)
    rows = all_deliveries(state.engine)
    assert answer == {"accepted": 2, "duplicates": 0, "skipped": 0, "ids": [r.id for r in rows]}
    assert [(r.email, r.clevertap_id, r.target) for r in rows] == [
        ("a@example.com", "__a", "MM Email Opened"),
        ("b@example.com", "__b", "MM Email Bounced"),
    ]
    # Every item has its own id: each is stored as a call of its own, keyed by that id.
    calls = all_calls(state.engine)
    assert [c.dedup_key for c in calls] == ["mailmodo.events:id:e1", "mailmodo.events:id:e2"]
    # Each keeps the body as received (a small array).
    assert [orjson.loads(c.body) for c in calls] == [body, body]


async def test_an_array_with_ids_and_a_deeply_nested_extra_field_is_stored(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    """Splitting the array must not refuse what the one-call path took (orjson writes 254
    levels at most, reads 1,024)."""
    deep: Any = 1
    for _ in range(300):
        deep = {"a": deep}
    body = [
        opened("a@example.com", clevertap_id="__a", event_id="d1", extra=deep),
        opened("b@example.com", clevertap_id="__b", event_id="d2"),
    ]
    answer = await post_mm(client, body)
    assert (answer["accepted"], answer["duplicates"]) == (2, 0)
    assert (await post_mm(client, body[1]))["duplicates"] == 1


async def test_activity_form_submission_gives_two_events(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    body = {
        "event": "form_submitted",
        "email": "f@example.com",
        "clevertap_id": "__f",
        "timestamp": "2023-11-14T22:13:20Z",
        "template_name": "Onboarding: Survey!",
        "form_id": "f1",
        "form_response": {"q1": "yes", "q2": ["a", "b"]},
    }
    answer = await post_mm(client, body)
    rows = all_deliveries(state.engine)
    assert answer["accepted"] == 2
    assert answer["ids"] == [r.id for r in rows]
    assert event_rows(state) == [
        mm_row(
            "f@example.com",
            "__f",
            {
                "evtName": "MM Email Form Submitted",
                "evtData": {
                    "Template Name": "Onboarding: Survey!",
                    "Form ID": "f1",
                    "Answer Count": 2,
                },
                "ts": 1700000000,
            },
        ),
        mm_row(
            "f@example.com",
            "__f",
            {
                "evtName": "MM Onboarding Survey Form Submitted",
                "evtData": {
                    "q1": "yes",
                    "q2": "a, b",
                    "Form ID": "f1",
                    "Template Name": "Onboarding: Survey!",
                },
                "ts": 1700000000,
            },
        ),
    ]


# --- journey webhook cards ------------------------------------------------------------------


async def test_journey_card_takes_its_event_from_the_path(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    before = int(utcnow().timestamp())
    answer = await post_mm(client, JOURNEY_CARD, "opened")
    after = int(utcnow().timestamp())
    [row] = all_deliveries(state.engine)
    assert answer == {"accepted": 1, "duplicates": 0, "skipped": 0, "ids": [row.id]}
    body = payload_of(row)
    assert before <= body["ts"] <= after
    assert event_rows(state) == [
        mm_row(
            "gou@mailmodo.com",
            "__journey-ct",
            {
                "evtName": "MM Email Opened",
                "evtData": {
                    "Campaign ID": "31422f76-4444-4a72-a630-dd6f9f615bc3",
                    "Email Type": "html",
                    "Journey ID": "5d31c2b4-2222-4a84-acd3-834cae80231b",
                    "Mailmodo Contact ID": "cc56708d-1111-4fea-8c07-a4bfa5a7b79b",
                    "Trigger Source": "CsvList",
                    "Email Ref": "064c76e7-3333-4780-a001-226c066aaa12",
                },
                "ts": body["ts"],
            },
        )
    ]
    [call] = all_calls(state.engine)
    assert call.target == "opened"
    assert call.dedup_key == (
        "mailmodo.events:id:journey:5d31c2b4-2222-4a84-acd3-834cae80231b:"
        "cc56708d-1111-4fea-8c07-a4bfa5a7b79b:opened:064c76e7-3333-4780-a001-226c066aaa12"
    )


async def test_journey_card_event_properties_become_event_data(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    """mailmodo.md §5.1, custom-event trigger: eventProperty is carried along."""
    body = {
        "triggerData": {
            "data": {"clevertap_id": "__p"},
            "eventProperty": {"Name": "APPLE iPhone 13", "Price": "829", "Currency": "USD"},
            "triggerSource": "New Custom Event Trigger - Product Viewed",
            "email": "gou@mailmodo.com",
            "userId": "d3775892",
            "journeyId": "3f135bf7",
        }
    }
    await post_mm(client, body, "clicked")
    [row] = all_deliveries(state.engine)
    assert payload_of(row)["evtName"] == "MM Email Link Clicked"
    assert payload_of(row)["evtData"] == {
        "Name": "APPLE iPhone 13",
        "Price": "829",
        "Currency": "USD",
        "Journey ID": "3f135bf7",
        "Mailmodo Contact ID": "d3775892",
        "Trigger Source": "New Custom Event Trigger - Product Viewed",
    }


async def test_journey_card_with_form_submission_data_is_a_form_submission(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    form = {k: v for k, v in FORM_WEBHOOK.items() if k != "recipientData"}
    body = {
        "triggerData": {
            "email": "test@rudderstack.com",
            "userId": "u-1",
            "journeyId": "j-1",
            "triggerSource": "form submission",
            "data": {"clevertap_id": "__trigger-ct"},
            "eventProperty": {},
            "formSubmissionData": form,
        }
    }
    answer = await post_mm(client, body)
    rows = all_deliveries(state.engine)
    assert answer == {"accepted": 2, "duplicates": 0, "skipped": 0, "ids": [r.id for r in rows]}
    summary, detail = (payload_of(r) for r in rows)
    assert [r.target for r in rows] == [
        "MM Email Form Submitted",
        "MM Campaign-testing Form Submitted",
    ]
    assert {r.clevertap_id for r in rows} == {"__trigger-ct"}
    assert summary["ts"] == detail["ts"] == 1662695887
    assert summary["evtData"] == {
        "Campaign Name": "Campaign-testing",
        "Campaign ID": "0b53e1bf-84ae-4198-9184-8a4d6e1fa3dd",
        "Form ID": "formosztd5",
        "Submission Type": "amp",
        "Response ID": "ad20a980-4fce-44b6-887d-2236df514a76",
        "Answer Count": 5,
        "Journey ID": "j-1",
        "Mailmodo Contact ID": "u-1",
        "Trigger Source": "form submission",
    }
    assert detail["evtData"] == {
        "elementjbtz42": "peace",
        "element8jzo13": "Useful",
        "recommend": "1",
        "liking": "downvote",
        "satisfaction": "1",
        "Form ID": "formosztd5",
        "Response ID": "ad20a980-4fce-44b6-887d-2236df514a76",
        "Campaign Name": "Campaign-testing",
    }
    [call] = all_calls(state.engine)
    assert call.dedup_key == "mailmodo.events:id:ad20a980-4fce-44b6-887d-2236df514a76"


# --- the flat form-submission webhook -------------------------------------------------------


async def test_flat_form_webhook_gives_summary_and_answers_events(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    answer = await post_mm(client, FORM_WEBHOOK)
    rows = all_deliveries(state.engine)
    assert answer == {"accepted": 2, "duplicates": 0, "skipped": 0, "ids": [r.id for r in rows]}
    assert event_rows(state) == [
        mm_row(
            "test@rudderstack.com",
            "__form-ct",
            {
                "evtName": "MM Email Form Submitted",
                "evtData": {
                    "Campaign Name": "Campaign-testing",
                    "Campaign ID": "0b53e1bf-84ae-4198-9184-8a4d6e1fa3dd",
                    "Form ID": "formosztd5",
                    "Submission Type": "amp",
                    "Response ID": "ad20a980-4fce-44b6-887d-2236df514a76",
                    "Answer Count": 5,
                },
                "ts": 1662695887,
            },
        ),
        mm_row(
            "test@rudderstack.com",
            "__form-ct",
            {
                "evtName": "MM Campaign-testing Form Submitted",
                "evtData": {
                    "elementjbtz42": "peace",
                    "element8jzo13": "Useful",
                    "recommend": "1",
                    "liking": "downvote",
                    "satisfaction": "1",
                    "Form ID": "formosztd5",
                    "Response ID": "ad20a980-4fce-44b6-887d-2236df514a76",
                    "Campaign Name": "Campaign-testing",
                },
                "ts": 1662695887,
            },
        ),
    ]


@pytest.mark.parametrize(
    ("extra", "name"),
    [
        ({"templateName": "NPS: Q3 (2024)!"}, "MM NPS Q3 (2024) Form Submitted"),
        ({}, "MM Campaign-testing Form Submitted"),
        ({"campaignName": None}, "MM formosztd5 Form Submitted"),
    ],
)
async def test_form_answers_event_is_named_after_template_else_campaign_else_form(
    client: httpx.AsyncClient, state: BridgeState, extra: dict[str, Any], name: str
) -> None:
    body = copy.deepcopy(FORM_WEBHOOK) | extra
    await post_mm(client, body)
    assert [r.target for r in all_deliveries(state.engine)] == ["MM Email Form Submitted", name]


# --- what the bridge refuses ----------------------------------------------------------------


async def assert_rejected(
    state: BridgeState, status: int, reason_start: str, target: str | None = None
) -> None:
    [call] = all_calls(state.engine)
    assert call.status == CallStatus.REJECTED.value
    assert call.http_status == status
    assert (call.source, call.route, call.target) == ("mailmodo", "mailmodo.events", target)
    assert call.reason is not None
    assert call.reason.startswith(reason_start), call.reason
    assert call.dedup_key is None
    assert all_deliveries(state.engine) == []


async def test_unknown_shape_is_422_with_what_is_missing_and_kept(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    raw = b'{"hello": "world", "count": 3}'
    resp = await client.post(
        events_path(), content=raw, headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 422
    answer = resp.json()
    assert answer["error"] == "unknown payload shape"
    assert answer["detail"]["missing"] == ["event"]
    assert answer["detail"]["keys"] == ["count", "hello"]
    await assert_rejected(state, 422, "unknown payload shape")
    assert all_calls(state.engine)[0].body == raw.decode()


@pytest.mark.parametrize(
    ("body", "event", "error", "missing"),
    [
        pytest.param(
            {"triggerData": JOURNEY_CARD["triggerData"]},
            None,
            "event type unknown: put it in the URL, e.g. /events/opened",
            ["event"],
            id="journey-card-without-path-event",
        ),
        pytest.param(
            {"event": "opened"},
            None,
            "no recipient: neither a valid email nor a clevertap_id",
            ["email", "clevertap_id"],
            id="no-recipient",
        ),
        pytest.param(
            {"event": "opened", "email": "not-an-address"},
            None,
            "no recipient: neither a valid email nor a clevertap_id",
            ["email", "clevertap_id"],
            id="invalid-email",
        ),
        pytest.param(
            {"event": "delivered", "email": "a@example.com"},
            None,
            "unknown event type",
            None,
            id="unknown-event-in-body",
        ),
        pytest.param(
            opened(), "delivered", "unknown event type in the URL", None, id="unknown-path-event"
        ),
        pytest.param(
            "just a string",
            None,
            "expected a JSON object",
            None,
            id="not-an-object",
        ),
        pytest.param([], None, "empty array", None, id="empty-array"),
    ],
)
async def test_unreadable_callbacks_are_422_and_kept(
    client: httpx.AsyncClient,
    state: BridgeState,
    body: Any,
    event: str | None,
    error: str,
    missing: list[str] | None,
) -> None:
    resp = await client.post(events_path(event), json=body)
    assert resp.status_code == 422, resp.text
    answer = resp.json()
    assert answer["error"] == error
    if missing is not None:
        assert answer["detail"]["missing"] == missing
    await assert_rejected(state, 422, error, event)


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"", b"   ", b'{"event": "opened",'],
    ids=["garbage", "empty", "blank", "cut"],
)
async def test_malformed_json_is_400_and_kept(
    client: httpx.AsyncClient, state: BridgeState, raw: bytes
) -> None:
    resp = await client.post(
        events_path("opened"), content=raw, headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 400
    assert resp.json()["error"] == "malformed JSON"
    await assert_rejected(state, 400, "malformed JSON", "opened")
    assert all_calls(state.engine)[0].body == raw.decode()


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
async def test_non_json_content_type_is_415_and_kept(
    client: httpx.AsyncClient, state: BridgeState, content_type: str
) -> None:
    raw = json.dumps(opened(clevertap_id=CT_ID)).encode()
    resp = await client.post(events_path(), content=raw, headers={"Content-Type": content_type})
    assert resp.status_code == 415
    assert resp.json()["detail"] == {"content_type": content_type, "expected": "application/json"}
    await assert_rejected(state, 415, "unsupported media type")


@pytest.mark.parametrize(
    "content_type", [None, "application/json; charset=utf-8", "application/vnd.mailmodo+json"]
)
async def test_json_like_or_missing_content_type_is_accepted(
    client: httpx.AsyncClient, state: BridgeState, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    raw = json.dumps(opened(clevertap_id=CT_ID)).encode()
    request = client.build_request("POST", events_path(), content=raw, headers=headers)
    assert ("content-type" in request.headers) == (content_type is not None)
    resp = await client.send(request)
    assert resp.status_code == 200, resp.text
    assert len(all_deliveries(state.engine)) == 1


@pytest.fixture
async def small_app(sqlite_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, BridgeState]]:
    """An app whose body limit is the smallest allowed (1 KiB)."""
    settings = make_settings(sqlite_url, max_body_bytes=1024, rejected_body_bytes=256)
    async with running_app(settings) as app:
        yield app


def big_body() -> bytes:
    return json.dumps(opened(clevertap_id=CT_ID, note="x" * 3000)).encode()


async def test_body_over_the_limit_is_413_and_kept_truncated(
    small_app: tuple[httpx.AsyncClient, BridgeState],
) -> None:
    client, state = small_app
    resp = await client.post(
        events_path("opened"), content=big_body(), headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 413
    assert resp.json()["detail"]["limit_bytes"] == 1024
    await assert_rejected(state, 413, "body too large", "opened")
    assert all_calls(state.engine)[0].body_truncated is True


async def test_streamed_body_over_the_limit_is_413_and_kept_truncated(
    small_app: tuple[httpx.AsyncClient, BridgeState],
) -> None:
    """Without a Content-Length the limit is enforced while reading; the start is kept."""
    client, state = small_app
    raw = big_body()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(raw), 200):
            yield raw[i : i + 200]

    resp = await client.post(
        events_path(), content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 413
    await assert_rejected(state, 413, "body too large")
    [call] = all_calls(state.engine)
    assert call.body_truncated is True
    assert call.body == raw[:256].decode()


async def test_body_at_the_limit_is_accepted(
    small_app: tuple[httpx.AsyncClient, BridgeState],
) -> None:
    client, state = small_app
    raw = json.dumps(opened(clevertap_id=CT_ID)).encode()
    raw = raw[:-1] + b" " * (1024 - len(raw)) + b"}"
    assert len(raw) == 1024
    resp = await client.post(
        events_path(), content=raw, headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 200, resp.text
    assert len(all_deliveries(state.engine)) == 1


# --- PostgreSQL: values the columns cannot hold ----------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("raw", "content_type", "status"),
    [
        (b'{"event": "opened", "email": "a\\u0000b@x.io"}', "application/json", 422),
        (
            b'{"event": "opened", "email": "a@x.io", "clevertap_id": "__a\\u0000"}',
            "application/json",
            422,
        ),
        (
            b'{"event": "opened", "email": "a@x.io", "event_id": "e\\u0000"}',
            "application/json",
            422,
        ),
        (b'{"event": "opened", "email": "a@x.io"}', "application/json; p=" + "p" * 200, 422),
        (b'{"event": "opened",\x00 "email": "a@x.io"}', "application/json", 400),
    ],
    ids=[
        "nul-in-email",
        "nul-in-clevertap-id",
        "nul-in-event-id",
        "long-content-type",
        "nul-byte-in-rejected-body",
    ],
)
async def test_unstorable_values_are_refused_and_kept_on_postgres(
    postgres_server: str, raw: bytes, content_type: str, status: int
) -> None:
    """Not a 503 (the sender would retry in vain): a 4xx, with the call kept for the operator."""
    _reset_postgres(postgres_server)
    async with running_app(make_settings(postgres_server)) as (client, state):
        resp = await client.post(events_path(), content=raw, headers={"Content-Type": content_type})
        assert resp.status_code == status, resp.text
        [call] = all_calls(state.engine)
        assert (call.status, call.http_status) == (CallStatus.REJECTED.value, status)
        assert all_deliveries(state.engine) == []


async def test_body_hash_key_names_the_normalised_path_event(database_url: str) -> None:
    async with running_app(make_settings(database_url)) as (client, state):
        body = {"email": "a@x.io", "clevertap_id": "__a"}  # no ids: the body hash decides
        first = await post_mm(client, body, "opened")
        for spelling in ("Opened", "email_opened", "opened" + "-" * 300):
            answer = await post_mm(client, body, spelling)
            assert answer == {"accepted": 0, "duplicates": 1, "skipped": 0, "ids": first["ids"]}
        assert len(all_deliveries(state.engine)) == 1
