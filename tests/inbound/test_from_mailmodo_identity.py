"""What the Mailmodo callback service decides, seen through the real app: which calls are
duplicates, and which CleverTap profile each event is for (payload, identity table, or the
``BRIDGE_UNRESOLVED_IDENTITY`` policy: park, email or drop)."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy import update

from app.clock import utcnow
from app.outbox.models import CallStatus, Delivery, InboundCall, State
from app.state import BridgeState
from tests.conftest import make_settings
from tests.factories import (
    all_calls,
    all_deliveries,
    all_identities,
    payload_of,
)
from tests.worker.conftest_upload import (
    ACCOUNT_HEADERS,
    all_sent,
    close_to,
    ct_success,
    learn_identity,
    opened,
    post_mm,
    running_app,
    uploader_for,
)

JOURNEY: dict[str, Any] = {
    "eventData": {"type": "html"},
    "triggerData": {
        "data": {},
        "triggerSource": "CsvList",
        "email": "jo@example.com",
        "userId": "user-1",
        "journeyId": "journey-1",
        "eventProperty": {},
    },
    "lastCampaignEmailRef": "ref-1",
    "lastCampaignId": "camp-1",
}

FORM: dict[str, Any] = {
    "responseId": "resp-1",
    "recipientEmail": "fo@example.com",
    "formId": "form-1",
    "recordedAt": {"ts": 1662695887},
    "submissionSource": "amp",
    "rating": "5",
    "recipientData": {"email": "fo@example.com", "clevertap_id": "__fo"},
    "campaignName": "Feedback",
}


def journey(**trigger: Any) -> dict[str, Any]:
    body = copy.deepcopy(JOURNEY)
    body["triggerData"].update(trigger)
    return body


async def assert_duplicate(
    client: httpx.AsyncClient,
    state: BridgeState,
    first: dict[str, Any],
    body: Any,
    event: str | None = None,
) -> None:
    """``body`` is answered as a duplicate of the call that answered ``first``."""
    before = [d.id for d in all_deliveries(state.engine)]
    answer = await post_mm(client, body, event)
    assert answer == {
        "accepted": 0,
        "duplicates": len(first["ids"]),
        "skipped": 0,
        "ids": first["ids"],
    }
    original, dup = all_calls(state.engine)[-2:]
    assert dup.status == CallStatus.DUPLICATE.value
    assert dup.reason == f"duplicate of call {original.id}"
    assert dup.dedup_key is None
    assert [d.id for d in all_deliveries(state.engine)] == before  # nothing new to send
    assert set(first["ids"]) <= set(before)


# --- duplicates ------------------------------------------------------------------------------


async def test_same_event_id_twice_is_a_duplicate(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    first = await post_mm(client, opened(event_id="evt-9", clevertap_id="__a"))
    assert first["accepted"] == 1
    # A retry may differ in details; the event id alone decides.
    await assert_duplicate(
        client, state, first, opened(event_id="evt-9", clevertap_id="__a", timestamp=1700000099)
    )


async def test_same_event_id_of_another_event_is_not_a_duplicate(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    await post_mm(client, opened(event_id="evt-1", clevertap_id="__a"))
    answer = await post_mm(client, opened(event_id="evt-2", clevertap_id="__a"))
    assert answer["accepted"] == 1
    assert len(all_deliveries(state.engine)) == 2


async def test_same_response_id_twice_is_a_duplicate(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    first = await post_mm(client, FORM)
    assert first["accepted"] == 2
    await assert_duplicate(client, state, first, FORM | {"recordedAt": {"ts": 1662695999}})


async def test_form_webhook_and_journey_form_share_the_response_id(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    """The same response may arrive through both routes; it is sent to CleverTap once."""
    first = await post_mm(client, FORM)
    in_journey = journey(formSubmissionData=FORM)
    await assert_duplicate(client, state, first, in_journey)


async def test_same_journey_tuple_on_the_same_path_event_is_a_duplicate(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    first = await post_mm(client, JOURNEY, "opened")
    assert first["accepted"] == 1
    # Another body (different extras) with the same (journeyId, userId, event, email ref).
    retried = journey(triggerSource="Api", eventProperty={"x": 1})
    await assert_duplicate(client, state, first, retried, "opened")


async def test_different_path_events_with_the_same_journey_body_are_not_duplicates(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    await post_mm(client, JOURNEY, "opened")
    answer = await post_mm(client, JOURNEY, "clicked")
    assert answer["accepted"] == 1
    assert [d.target for d in all_deliveries(state.engine)] == [
        "MM Email Opened",
        "MM Email Link Clicked",
    ]
    assert [c.status for c in all_calls(state.engine)] == ["accepted", "accepted"]


@pytest.mark.parametrize(
    "changed",
    [
        {"lastCampaignEmailRef": "ref-2"},
        {"triggerData": {**JOURNEY["triggerData"], "userId": "user-2"}},
        {"triggerData": {**JOURNEY["triggerData"], "journeyId": "journey-2"}},
    ],
    ids=["email-ref", "user", "journey"],
)
async def test_another_part_of_the_journey_tuple_is_not_a_duplicate(
    client: httpx.AsyncClient, state: BridgeState, changed: dict[str, Any]
) -> None:
    await post_mm(client, JOURNEY, "opened")
    answer = await post_mm(client, JOURNEY | changed, "opened")
    assert answer["accepted"] == 1
    assert len(all_deliveries(state.engine)) == 2


async def test_without_ids_the_body_hash_decides(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    body = opened(clevertap_id="__a")  # no event_id
    first = await post_mm(client, body)
    key = all_calls(state.engine)[0].dedup_key
    assert key is not None
    assert key.startswith("mailmodo.events::sha256:")
    await assert_duplicate(client, state, first, body)
    # Any other byte makes another event...
    answer = await post_mm(client, body | {"timestamp": 1700000001})
    assert answer["accepted"] == 1
    # ... and so does the same body for another path event.
    answer = await post_mm(client, body, "clicked")
    assert answer["accepted"] == 1
    assert [d.target for d in all_deliveries(state.engine)] == [
        "MM Email Opened",
        "MM Email Opened",
        "MM Email Link Clicked",
    ]


async def test_journey_card_without_ids_falls_back_to_the_body_hash(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    body = {"triggerData": {"email": "jo@example.com", "data": {"clevertap_id": "__j"}}}
    first = await post_mm(client, body, "opened")
    key = all_calls(state.engine)[0].dedup_key
    assert key is not None
    assert key.startswith("mailmodo.events:opened:sha256:")
    await assert_duplicate(client, state, first, body, "opened")


async def test_an_array_is_deduplicated_only_when_every_item_has_an_id(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    both = [opened(event_id="e1", clevertap_id="__a"), opened(event_id="e2", clevertap_id="__a")]
    first = await post_mm(client, both)
    before = [d.id for d in all_deliveries(state.engine)]
    again = await post_mm(client, both)
    assert again == {"accepted": 0, "duplicates": 2, "skipped": 0, "ids": first["ids"]}
    assert [d.id for d in all_deliveries(state.engine)] == before
    # Without an id on every item, the body as a whole is the key (the ids are not trusted).
    one_without = [opened(event_id="e1", clevertap_id="__a"), opened(clevertap_id="__a")]
    assert (await post_mm(client, one_without))["accepted"] == 2


@pytest.mark.parametrize(
    ("calls", "answers"),
    [
        # the helper's finding: an event seen alone, then in an array with a new one
        ([["RPT-1"], ["RPT-1", "RPT-2"]], [(1, 0), (1, 1)]),
        # an array, then one of its events alone, then the other with a new one
        ([["A", "B"], ["B"], ["C", "A"]], [(2, 0), (0, 1), (1, 1)]),
        # the same event twice in one array
        ([["X", "X"]], [(1, 1)]),
        ([["X", "Y", "X", "Y"]], [(2, 2)]),
    ],
    ids=["single-then-array", "regrouped", "repeat-inside", "repeats-inside"],
)
async def test_every_event_id_is_deduplicated_whichever_call_it_comes_in(
    client: httpx.AsyncClient,
    state: BridgeState,
    calls: list[list[str]],
    answers: list[tuple[int, int]],
) -> None:
    """An event id already seen in the window is a duplicate whether it came alone, in an
    array or twice in the same array; the new events of the same call are accepted."""
    seen: dict[str, int] = {}
    for ids, (accepted, duplicates) in zip(calls, answers, strict=True):
        body = [opened(f"{i.lower()}@example.com", event_id=i, clevertap_id=f"__{i}") for i in ids]
        answer = await post_mm(client, body if len(body) > 1 else body[0])
        assert (answer["accepted"], answer["duplicates"]) == (accepted, duplicates), ids
        assert len(answer["ids"]) == len(ids)
        for event_id, delivery_id in zip(ids, answer["ids"], strict=True):
            # a duplicate answers with the id of the delivery first made for that event
            assert seen.setdefault(event_id, delivery_id) == delivery_id
    deliveries = all_deliveries(state.engine)
    assert sorted(d.clevertap_id for d in deliveries) == sorted(f"__{i}" for i in seen)


async def test_past_the_dedup_window_the_same_id_is_new_again(sqlite_url: str) -> None:
    async with running_app(make_settings(sqlite_url, dedup_window_seconds=60)) as (client, state):
        await post_mm(client, opened(event_id="evt-1", clevertap_id="__a"))
        with state.engine.begin() as conn:
            conn.execute(update(InboundCall).values(received_at=utcnow() - timedelta(minutes=5)))
        answer = await post_mm(client, opened(event_id="evt-1", clevertap_id="__a"))
        assert answer["accepted"] == 1
        assert len(all_deliveries(state.engine)) == 2


async def test_dedup_window_zero_turns_deduplication_off(sqlite_url: str) -> None:
    async with running_app(make_settings(sqlite_url, dedup_window_seconds=0)) as (client, state):
        for _ in range(2):
            answer = await post_mm(client, opened(event_id="evt-1", clevertap_id="__a"))
            assert answer["accepted"] == 1
        assert [c.dedup_key for c in all_calls(state.engine)] == [None, None]
        assert len(all_deliveries(state.engine)) == 2


# --- the CleverTap ID ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "event"),
    [
        pytest.param(opened("id@example.com", clevertap_id="__payload"), None, id="top-level"),
        pytest.param(opened("id@example.com", objectId="__payload"), None, id="objectId"),
        pytest.param(opened("id@example.com", data={"clevertap_id": "__payload"}), None, id="data"),
        pytest.param(
            opened("id@example.com", recipientData={"clevertapId": "__payload"}),
            None,
            id="recipientData",
        ),
        pytest.param(
            FORM
            | {"recipientEmail": "id@example.com", "recipientData": {"clevertap_id": "__payload"}},
            None,
            id="form-recipientData",
        ),
        pytest.param(
            journey(email="id@example.com", data={"clevertap_id": "__payload"}),
            "opened",
            id="triggerData.data",
        ),
    ],
)
async def test_clevertap_id_from_the_payload_wins(
    client: httpx.AsyncClient, state: BridgeState, body: dict[str, Any], event: str | None
) -> None:
    await learn_identity(client, "id@example.com")  # the table says __obj0
    assert all_identities(state.engine) == {"id@example.com": "__obj0"}
    answer = await post_mm(client, body, event)
    rows = [d for d in all_deliveries(state.engine) if d.upstream == "clevertap"]
    assert [d.id for d in rows] == answer["ids"]
    assert {(d.email, d.clevertap_id, d.state) for d in rows} == {
        ("id@example.com", "__payload", State.PENDING.value)
    }


async def test_clevertap_id_from_the_identity_table(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    await learn_identity(client, "Bob@Example.com")
    await post_mm(client, opened("bob@EXAMPLE.com"))
    [row] = [d for d in all_deliveries(state.engine) if d.upstream == "clevertap"]
    assert (row.email, row.clevertap_id, row.state, row.reason) == (
        "bob@example.com",
        "__obj0",
        State.PENDING.value,
        None,
    )


async def test_callback_with_an_id_teaches_the_identity_table(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    await post_mm(client, opened("kim@example.com", clevertap_id="__kim", event_id="e1"))
    await post_mm(client, opened("kim@example.com", event_id="e2"))
    assert [(d.clevertap_id, d.state) for d in all_deliveries(state.engine)] == [
        ("__kim", "pending"),
        ("__kim", "pending"),
    ]


# --- unresolved: park (the default) ----------------------------------------------------------


async def test_unknown_recipient_is_parked(client: httpx.AsyncClient, state: BridgeState) -> None:
    assert state.settings.unresolved_identity.value == "park"
    answer = await post_mm(client, opened("pat@example.com"))
    assert answer["accepted"] == 1
    [row] = all_deliveries(state.engine)
    assert (row.state, row.clevertap_id, row.finished_at) == (State.PARKED.value, None, None)
    assert row.reason is not None
    assert row.reason.startswith("waiting for a CleverTap ID for this email until ")
    # It waits until BRIDGE_PARK_TTL_HOURS (72 by default) from now.
    assert close_to(row.next_attempt_at, utcnow() + timedelta(hours=72))


async def test_park_release_upload(
    client: httpx.AsyncClient, state: BridgeState, clevertap_api: respx.MockRouter
) -> None:
    """A parked event is released by the CleverTap call that teaches its email's ID (in that
    call's own transaction: no worker runs here) and then uploaded keyed by ``objectId``."""
    route = clevertap_api.post("/1/upload").mock(side_effect=ct_success)
    await post_mm(client, opened("pat@example.com", event_id="e1"))
    await post_mm(client, FORM | {"recipientEmail": "pat@example.com", "recipientData": {}})
    await post_mm(client, opened("other@example.com", event_id="e2"))
    assert {d.state for d in all_deliveries(state.engine)} == {State.PARKED.value}

    async with uploader_for(state.engine, state.settings) as uploader:
        assert (await uploader.run_once()).claimed == 0  # parked rows are never claimed
        assert route.call_count == 0

        await learn_identity(client, "PAT@example.com")  # CleverTap calls with __obj0
        mine: list[Delivery] = []
        others: list[Delivery] = []
        for d in all_deliveries(state.engine):
            if d.upstream == "clevertap":
                (mine if d.email == "pat@example.com" else others).append(d)
        assert len(mine) == 3
        assert {(d.state, d.clevertap_id, d.reason) for d in mine} == {
            (State.PENDING.value, "__obj0", None)
        }
        assert all(d.next_attempt_at <= utcnow() for d in mine)
        assert [(d.state, d.clevertap_id) for d in others] == [(State.PARKED.value, None)]

        stats = await uploader.run_once()
        assert stats.claimed == 3
    [request] = [c.request for c in route.calls]
    assert {k: request.headers[k] for k in ACCOUNT_HEADERS} == ACCOUNT_HEADERS
    [records] = all_sent(route)
    assert [(r["objectId"], r["evtName"], r["type"]) for r in records] == [
        ("__obj0", "MM Email Opened", "event"),
        ("__obj0", "MM Email Form Submitted", "event"),
        ("__obj0", "MM Feedback Form Submitted", "event"),
    ]
    assert all("identity" not in r for r in records)
    assert records[0] == {
        "type": "event",
        "evtName": "MM Email Opened",
        "evtData": {},
        "ts": 1700000000,
        "objectId": "__obj0",
    }
    after = [d for d in all_deliveries(state.engine) if d.upstream == "clevertap"]
    assert [d.state for d in after if d.email == "pat@example.com"] == [State.DELIVERED.value] * 3
    assert [d.state for d in after if d.email == "other@example.com"] == [State.PARKED.value]


async def test_a_callback_carrying_the_id_releases_parked_events(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    await post_mm(client, opened("pat@example.com", event_id="e1"))
    await post_mm(client, {"event": "clicked", "email": "pat@example.com", "clevertap_id": "__p"})
    assert [(d.state, d.clevertap_id) for d in all_deliveries(state.engine)] == [
        (State.PENDING.value, "__p"),
        (State.PENDING.value, "__p"),
    ]


# --- unresolved: email, drop -----------------------------------------------------------------


@pytest.fixture
async def email_mode(sqlite_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, BridgeState]]:
    async with running_app(make_settings(sqlite_url, unresolved_identity="email")) as app:
        yield app


@pytest.fixture
async def drop_mode(sqlite_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, BridgeState]]:
    async with running_app(make_settings(sqlite_url, unresolved_identity="drop")) as app:
        yield app


async def test_email_mode_uploads_with_identity_email(
    email_mode: tuple[httpx.AsyncClient, BridgeState], clevertap_api: respx.MockRouter
) -> None:
    client, state = email_mode
    route = clevertap_api.post("/1/upload").mock(side_effect=ct_success)
    await post_mm(client, opened("Eve@Example.com", event_id="e1"))
    await learn_identity(client, "known@example.com")
    await post_mm(client, opened("known@example.com", event_id="e2"))
    rows = [d for d in all_deliveries(state.engine) if d.upstream == "clevertap"]
    assert [(d.state, d.clevertap_id) for d in rows] == [
        (State.PENDING.value, None),
        (State.PENDING.value, "__obj0"),  # a known ID is still preferred
    ]
    async with uploader_for(state.engine, state.settings) as uploader:
        await uploader.run_once()
    [records] = all_sent(route)
    assert records == [
        {
            "type": "event",
            "evtName": "MM Email Opened",
            "evtData": {},
            "ts": 1700000000,
            "identity": "eve@example.com",
        },
        {
            "type": "event",
            "evtName": "MM Email Opened",
            "evtData": {},
            "ts": 1700000000,
            "objectId": "__obj0",
        },
    ]
    assert {d.state for d in all_deliveries(state.engine) if d.upstream == "clevertap"} == {
        State.DELIVERED.value
    }


async def test_drop_mode_keeps_the_event_as_dropped_and_never_uploads_it(
    drop_mode: tuple[httpx.AsyncClient, BridgeState], clevertap_api: respx.MockRouter
) -> None:
    client, state = drop_mode
    route = clevertap_api.post("/1/upload").mock(side_effect=ct_success)
    answer = await post_mm(client, opened("dan@example.com"))
    [row] = all_deliveries(state.engine)
    assert answer["ids"] == [row.id]
    assert row.state == State.DROPPED.value
    assert row.clevertap_id is None
    assert row.reason == "no CleverTap ID is known for this email (BRIDGE_UNRESOLVED_IDENTITY=drop)"
    assert row.finished_at is not None
    # Learning the ID later does not bring a dropped event back.
    await learn_identity(client, "dan@example.com")
    async with uploader_for(state.engine, state.settings) as uploader:
        assert (await uploader.run_once()).claimed == 0
    assert route.call_count == 0
    assert all_deliveries(state.engine)[0].state == State.DROPPED.value
    assert payload_of(all_deliveries(state.engine)[0])["evtName"] == "MM Email Opened"


# --- the same on PostgreSQL ------------------------------------------------------------------


async def test_duplicates_and_identities_on_every_backend(database_url: str) -> None:
    async with running_app(make_settings(database_url)) as (client, state):
        first = await post_mm(client, opened("a@example.com", event_id="evt-1"))
        await assert_duplicate(client, state, first, opened("a@example.com", event_id="evt-1"))
        journey_first = await post_mm(client, JOURNEY, "opened")
        await assert_duplicate(client, state, journey_first, JOURNEY, "opened")
        assert (await post_mm(client, JOURNEY, "clicked"))["accepted"] == 1
        await learn_identity(client, "A@example.com", "jo@example.com")
        await post_mm(client, opened("jo@example.com", event_id="evt-2"))
        rows = [d for d in all_deliveries(state.engine) if d.upstream == "clevertap"]
        assert [(d.email, d.target, d.state, d.clevertap_id) for d in rows] == [
            ("a@example.com", "MM Email Opened", "pending", "__obj0"),
            ("jo@example.com", "MM Email Opened", "pending", "__obj1"),
            ("jo@example.com", "MM Email Link Clicked", "pending", "__obj1"),
            ("jo@example.com", "MM Email Opened", "pending", "__obj1"),
        ]
        assert all_identities(state.engine) == {
            "a@example.com": "__obj0",
            "jo@example.com": "__obj1",
        }
