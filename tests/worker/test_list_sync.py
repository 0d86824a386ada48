"""POST /clevertap/lists/{list}/contacts end to end: stored, then read-then-write to Mailmodo."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import respx
from sqlalchemy import select

from app.clock import ManualClock
from app.outbox.models import Delivery
from app.state import BridgeState
from app.worker.build import build_mailmodo_deliverer
from app.worker.delivery import MailmodoDeliverer
from tests.conftest import CT_AUTH

ROUTE = "/clevertap/lists/Newsletter/contacts"


def ann_profile(**extra: Any) -> dict[str, Any]:
    """The worked example of contact-sync.md §5."""
    return {
        "Email": "ann@example.com",
        "Identity": "u-42",
        "ObjectId": "__ann",
        "ProfileData": {
            "First Name": "Anna",
            "Last Name": "Lee",
            "Mobile": "+4790000001",
            "Phone": "+4722000002",
        },
        **extra,
    }


async def deliver(state: BridgeState) -> None:
    deliverer = build_mailmodo_deliverer(state.engine, state.settings, "sync-test")
    assert deliverer is not None
    await deliverer.run_once(10)


def states(state: BridgeState) -> list[tuple[str, str | None]]:
    with state.engine.connect() as conn:
        return [(r.state, r.reason) for r in conn.execute(select(Delivery)).all()]


async def test_worked_example_fills_only_blanks(
    client: httpx.AsyncClient, state: BridgeState, mailmodo: respx.MockRouter
) -> None:
    body = {"targetId": 1, "key_values": {"tags": "vip, paying"}, "profiles": [ann_profile()]}
    r = await client.post(ROUTE, json=body, headers=CT_AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1

    read = mailmodo.get("/api/v1/getContactDetails").mock(
        return_value=httpx.Response(
            200, json={"email": "ann@example.com", "data": {"first_name": "Ann", "phone": ""}}
        )
    )
    write = mailmodo.post("/api/v1/addToList").mock(
        return_value=httpx.Response(
            200, json={"success": True, "message": "The contact is successfully added/updated"}
        )
    )
    await deliver(state)

    assert read.calls.last.request.url.params["email"] == "ann@example.com"
    sent = orjson.loads(write.calls.last.request.content)
    assert sent == {
        "email": "ann@example.com",
        "listName": "Newsletter",
        # first_name stays "Ann"; the blank phone is filled with the mobile number (R2, R3)
        "data": {
            "last_name": "Lee",
            "phone": "+4790000001",
            "clevertap_id": "__ann",
            "ct_tags": "ct_paying,ct_vip",
        },
    }
    assert write.calls.last.request.headers["mmApiKey"] == state.settings.mailmodo_api_key
    assert states(state) == [("delivered", None)]


async def test_unknown_contact_gets_every_field(
    client: httpx.AsyncClient, state: BridgeState, mailmodo: respx.MockRouter
) -> None:
    await client.post(ROUTE, json={"profiles": ann_profile()}, headers=CT_AUTH)
    mailmodo.get("/api/v1/getContactDetails").mock(
        return_value=httpx.Response(404, json={"message": "contact not found"})
    )
    write = mailmodo.post("/api/v1/addToList").mock(
        return_value=httpx.Response(200, json={"success": True})
    )
    await deliver(state)
    data = orjson.loads(write.calls.last.request.content)["data"]
    assert data == {
        "first_name": "Anna",
        "last_name": "Lee",
        "phone": "+4790000001",
        "clevertap_id": "__ann",
    }  # no tags named in the call: the managed tags property is left alone


async def test_guests_and_profiles_without_email_are_skipped(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    body = {
        "profiles": [
            ann_profile(),
            {"Email": "guest@example.com", "ObjectId": "__g"},  # no identity: a guest
            {"Identity": "u-7", "ObjectId": "__n"},  # no email
        ]
    }
    r = await client.post(ROUTE, json=body, headers=CT_AUTH)
    answer = r.json()
    assert (answer["accepted"], answer["skipped"]) == (1, 2)
    reasons = {s["reason"] for s in answer["skipped_reasons"]}
    assert reasons == {"guest profile (no identity)", "no email"}
    only_guests = await client.post(
        ROUTE, json={"profiles": {"Email": "g@example.com", "ObjectId": "__g"}}, headers=CT_AUTH
    )
    assert only_guests.status_code == 422


async def test_a_failed_read_is_retried_without_writing(
    client: httpx.AsyncClient, state: BridgeState, mailmodo: respx.MockRouter
) -> None:
    await client.post(ROUTE, json={"profiles": ann_profile()}, headers=CT_AUTH)
    mailmodo.get("/api/v1/getContactDetails").mock(return_value=httpx.Response(503))
    write = mailmodo.post("/api/v1/addToList").mock(return_value=httpx.Response(200))
    await deliver(state)
    assert write.call_count == 0
    [(row_state, reason)] = states(state)
    assert row_state == "pending"
    assert reason is not None
    assert "503" in reason


async def test_mailmodo_refusing_the_write_fails_for_good(
    client: httpx.AsyncClient, state: BridgeState, mailmodo: respx.MockRouter
) -> None:
    await client.post(ROUTE, json={"profiles": ann_profile()}, headers=CT_AUTH)
    mailmodo.get("/api/v1/getContactDetails").mock(return_value=httpx.Response(200, json={}))
    mailmodo.post("/api/v1/addToList").mock(
        return_value=httpx.Response(400, json={"message": "list does not exists"})
    )
    await deliver(state)
    [(row_state, reason)] = states(state)
    assert row_state == "failed"
    assert reason is not None
    assert "list does not exists" in reason


async def test_list_name_is_validated(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/clevertap/lists/%2E%2E/contacts", json={"profiles": ann_profile()}, headers=CT_AUTH
    )
    assert r.status_code == 422


async def test_an_unclear_contact_read_never_overwrites(
    client: httpx.AsyncClient, state: BridgeState, mailmodo: respx.MockRouter
) -> None:
    """Only a clear "no such contact" means every field may be written."""
    await client.post(ROUTE, json={"profiles": ann_profile()}, headers=CT_AUTH)
    mailmodo.get("/api/v1/getContactDetails").mock(
        return_value=httpx.Response(409, json={"message": "conflict"})
    )
    write = mailmodo.post("/api/v1/addToList").mock(return_value=httpx.Response(200))
    await deliver(state)
    assert write.call_count == 0
    [(row_state, _reason)] = states(state)
    assert row_state == "failed"


async def test_a_throttled_contact_read_holds_every_worker_off(
    client: httpx.AsyncClient,
    state: BridgeState,
    mailmodo: respx.MockRouter,
    deliverer: MailmodoDeliverer,
    clock: ManualClock,
) -> None:
    """A 429 with Retry-After to the read pushes the shared Mailmodo clock like any other 429
    (the hold-off is ``RowDeliverer.deliver``'s, whichever call of the attempt was throttled)."""
    await client.post(ROUTE, json={"profiles": ann_profile()}, headers=CT_AUTH)
    mailmodo.get("/api/v1/getContactDetails").mock(
        return_value=httpx.Response(
            429, json={"message": "slow down"}, headers={"Retry-After": "30"}
        )
    )
    write = mailmodo.post("/api/v1/addToList")
    await deliverer.run_once(10)
    assert not write.called
    assert [s for s, _ in states(state)] == ["pending"]
    [slot] = await deliverer.limiter.reserve(1)
    assert slot >= clock.epoch() + 29
