"""``POST /clevertap/mailmojo/lists/{list_id}/contacts`` end to end: stored, then read -> decide
-> write against a stateful fake of Mailmojo, by the rules of contact-sync.md (R1-R5)."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from app.outbox.models import State
from app.state import BridgeState
from app.worker.mailmojo import MailmojoDeliverer
from tests.conftest import CT_AUTH
from tests.factories import all_deliveries, attempts_of
from tests.mailmojo.conftest import (
    LIST_ID,
    MAILMOJO_TOKEN,
    ROUTE,
    FakeMailmojo,
    ann_profile,
    worked_example_call,
)

#: contact-sync.md §5: the existing Mailmojo contact ...
EXAMPLE_CONTACT: dict[str, Any] = {
    "email": "ann@example.com",
    "first_name": "Ann",
    "tags": ["newsletter-2024", "ct_vip", "ct_trial"],
}
#: ... and the one write it gets, byte for byte.
EXAMPLE_PATCH = (
    b'{"email":"ann@example.com","last_name":"Lee","phone":"+4790000001",'
    b'"tags":["newsletter-2024","ct_vip","ct_paying"]}'
)


async def post(
    client: httpx.AsyncClient, body: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    r = await client.post(ROUTE, json=body, headers={**CT_AUTH, **(headers or {})})
    assert r.status_code == 200, r.text
    return r


def only_row(state: BridgeState) -> Any:
    [row] = all_deliveries(state.engine)
    return row


# --- the worked example and the rules ----------------------------------------------------------


async def test_worked_example_byte_for_byte(
    client: httpx.AsyncClient,
    state: BridgeState,
    mailmojo: FakeMailmojo,
    deliverer: MailmojoDeliverer,
) -> None:
    mailmojo.store.add(**EXAMPLE_CONTACT)
    r = await post(client, worked_example_call())
    assert r.json()["accepted"] == 1

    assert (await deliverer.run_once(10)).outcomes == {"delivered": 1}

    read = mailmojo.read.calls.last.request
    assert (read.method, read.url.raw_path) == ("GET", b"/v1/contacts/ann%40example.com/")
    assert read.headers["Authorization"] == f"Bearer {MAILMOJO_TOKEN}"
    assert mailmojo.subscribe.call_count == 0
    write = mailmojo.update.calls.last.request
    assert (write.method, write.url.raw_path) == ("PATCH", b"/v1/contacts/ann%40example.com/")
    assert write.headers["Authorization"] == f"Bearer {MAILMOJO_TOKEN}"
    assert write.headers["Content-Type"] == "application/json"
    assert write.content == EXAMPLE_PATCH
    # first_name stays "Ann"; the blank phone gets the mobile number; ct_trial goes, external
    # tags stay in their order.
    assert mailmojo.store.contacts["ann@example.com"] == {
        "email": "ann@example.com",
        "status": "subscribed",
        "first_name": "Ann",
        "last_name": "Lee",
        "phone": "+4790000001",
        "tags": ["newsletter-2024", "ct_vip", "ct_paying"],
    }
    row = only_row(state)
    assert (row.state, row.upstream, row.direction, row.upstream_ref) == (
        State.DELIVERED,
        "mailmojo",
        "clevertap_to_mailmojo",
        "update",
    )


async def test_a_new_contact_is_subscribed_with_every_field(
    client: httpx.AsyncClient,
    state: BridgeState,
    mailmojo: FakeMailmojo,
    deliverer: MailmojoDeliverer,
) -> None:
    await post(client, worked_example_call())
    await deliverer.run_once(10)
    assert mailmojo.update.call_count == 0
    request = mailmojo.subscribe.calls.last.request
    assert request.url.raw_path == f"/v1/lists/{LIST_ID}/subscribers/".encode()
    # Every field, no `name`, no force_subscribe (a new contact has nothing to opt out of).
    assert orjson.loads(request.content) == {
        "email": "ann@example.com",
        "first_name": "Anna",
        "last_name": "Lee",
        "phone": "+4790000001",
        "tags": ["ct_paying", "ct_vip"],
    }
    assert only_row(state).upstream_ref == "subscribe"


async def test_a_second_identical_call_changes_nothing(
    client: httpx.AsyncClient,
    state: BridgeState,
    mailmojo: FakeMailmojo,
    deliverer: MailmojoDeliverer,
) -> None:
    mailmojo.store.add(**EXAMPLE_CONTACT)
    await post(client, worked_example_call())
    await deliverer.run_once(10)
    after_first = orjson.dumps(mailmojo.store.contacts).decode()

    # Within the dedup window the same call stores nothing new ...
    again = await post(client, worked_example_call())
    assert (again.json()["accepted"], again.json()["duplicates"]) == (0, 1)
    # ... and the same profile sent again (a new call) reads, finds nothing to change, writes
    # nothing.
    await post(client, worked_example_call(), {"Idempotency-Key": "second"})
    assert (await deliverer.run_once(10)).outcomes == {"delivered": 1}
    _first, second = all_deliveries(state.engine)
    assert (second.state, second.upstream_ref) == (State.DELIVERED, "unchanged")
    assert mailmojo.read.call_count == 2
    assert len(mailmojo.store.writes) == 1
    assert orjson.dumps(mailmojo.store.contacts).decode() == after_first
    [attempt] = attempts_of(state.engine, second.id)
    assert (attempt.outcome, attempt.status_code) == ("delivered", 200)


async def test_a_list_id_written_with_leading_zeros_is_the_same_list(
    client: httpx.AsyncClient,
    state: BridgeState,
    mailmojo: FakeMailmojo,
    deliverer: MailmojoDeliverer,
) -> None:
    """``/lists/0{id}/`` names list {id}: stored and sent as Mailmojo writes it, so a contact
    already on the list is found there and not subscribed again."""
    mailmojo.store.add(**EXAMPLE_CONTACT)
    path = ROUTE.replace(f"/lists/{LIST_ID}/", f"/lists/00{LIST_ID}/")
    assert path != ROUTE
    for key in ("first", "second"):
        r = await client.post(
            path, json=worked_example_call(), headers={**CT_AUTH, "Idempotency-Key": key}
        )
        assert r.status_code == 200, r.text
        assert (await deliverer.run_once(10)).outcomes == {"delivered": 1}
    first, second = all_deliveries(state.engine)
    assert first.target == second.target == LIST_ID
    assert second.upstream_ref == "unchanged"  # found on the list: nothing written again
    assert len(mailmojo.store.writes) == 1


async def test_guests_and_profiles_without_email_are_skipped(
    client: httpx.AsyncClient,
    state: BridgeState,
    mailmojo: FakeMailmojo,
    deliverer: MailmojoDeliverer,
) -> None:
    body = {
        "profiles": [
            ann_profile(),
            {"Email": "guest@example.com", "ObjectId": "__g"},  # only an objectId: a guest
            {"Identity": "u-7", "ObjectId": "__n"},  # no email
        ]
    }
    answer = (await post(client, body)).json()
    assert (answer["accepted"], answer["skipped"]) == (1, 2)
    assert {s["reason"] for s in answer["skipped_reasons"]} == {
        "guest profile (no identity)",
        "no email",
    }
    await deliverer.run_once(10)
    assert [c.request.url.raw_path for c in mailmojo.read.calls] == [
        b"/v1/contacts/ann%40example.com/"
    ]
    only_guests = await client.post(
        ROUTE, json={"profiles": {"Email": "g@example.com", "ObjectId": "__g"}}, headers=CT_AUTH
    )
    assert only_guests.status_code == 422
    assert only_guests.json()["error"] == "no valid recipient"


@pytest.mark.parametrize(
    "associations",
    [[], [{"list_id": 42, "status": "unsubscribed"}]],
    ids=["opted-out-elsewhere", "opted-out-of-this-list"],
)
async def test_a_contact_who_opted_out_is_updated_never_resubscribed(
    client: httpx.AsyncClient,
    mailmojo: FakeMailmojo,
    deliverer: MailmojoDeliverer,
    associations: list[dict[str, Any]],
) -> None:
    mailmojo.store.add(
        "ann@example.com", status="unsubscribed", first_name="Ann", list_associations=associations
    )
    await post(client, worked_example_call())
    await deliverer.run_once(10)
    assert mailmojo.subscribe.call_count == 0
    assert orjson.loads(mailmojo.update.calls.last.request.content) == {
        "email": "ann@example.com",
        "last_name": "Lee",
        "phone": "+4790000001",
        "tags": ["ct_paying", "ct_vip"],
    }


async def test_a_contact_on_other_lists_joins_this_one_without_forcing(
    client: httpx.AsyncClient, mailmojo: FakeMailmojo, deliverer: MailmojoDeliverer
) -> None:
    mailmojo.store.add(
        "ann@example.com",
        first_name="Ann",
        last_name="Berg",
        phone="+4711111111",
        tags=["newsletter-2024"],
        list_associations=[{"list_id": 7, "status": "subscribed"}],
    )
    await post(client, worked_example_call())
    await deliverer.run_once(10)
    assert mailmojo.update.call_count == 0
    assert orjson.loads(mailmojo.subscribe.calls.last.request.content) == {
        "email": "ann@example.com",
        "tags": ["newsletter-2024", "ct_paying", "ct_vip"],
        "force_subscribe": False,
    }


async def test_name_is_never_sent_and_a_full_name_is_not_split(
    client: httpx.AsyncClient, mailmojo: FakeMailmojo, deliverer: MailmojoDeliverer
) -> None:
    profile = {"Email": "bo@example.com", "Identity": "u-1", "Name": "Bo Ek", "Phone": "+4722"}
    await post(client, {"profiles": [profile]})
    await deliverer.run_once(10)
    assert orjson.loads(mailmojo.subscribe.calls.last.request.content) == {
        "email": "bo@example.com",
        "phone": "+4722",
    }


async def test_a_call_naming_no_tags_leaves_the_tags_alone(
    client: httpx.AsyncClient, mailmojo: FakeMailmojo, deliverer: MailmojoDeliverer
) -> None:
    mailmojo.store.add(**EXAMPLE_CONTACT)
    await post(client, {"profiles": [ann_profile()]})
    await deliverer.run_once(10)
    assert orjson.loads(mailmojo.update.calls.last.request.content) == {
        "email": "ann@example.com",
        "last_name": "Lee",
        "phone": "+4790000001",
    }
    assert mailmojo.store.contacts["ann@example.com"]["tags"] == EXAMPLE_CONTACT["tags"]


async def test_an_empty_tags_value_removes_only_the_managed_tags(
    client: httpx.AsyncClient, mailmojo: FakeMailmojo, deliverer: MailmojoDeliverer
) -> None:
    mailmojo.store.add(**{**EXAMPLE_CONTACT, "last_name": "Lee", "phone": "+47"})
    await post(client, {"key_values": {"tags": ""}, "profiles": [ann_profile()]})
    await deliverer.run_once(10)
    assert orjson.loads(mailmojo.update.calls.last.request.content) == {
        "email": "ann@example.com",
        "tags": ["newsletter-2024"],
    }
