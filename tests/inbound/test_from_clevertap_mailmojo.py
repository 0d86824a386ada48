"""``POST /clevertap/mailmojo/lists/{list_id}/contacts`` over ASGI, like the other CleverTap
routes: authentication, both bodies, the test call, duplicates, bad input answered and kept,
and what an app without a Mailmojo token does with the calls."""

from __future__ import annotations

import json

import httpx
import pytest

from app.outbox.models import State
from app.state import BridgeState
from app.worker.build import build_mailmojo_deliverer
from tests.conftest import CT_AUTH, make_settings, profiles_body
from tests.inbound.test_from_clevertap import (
    BAD_CREDENTIALS,
    GOOD_CREDENTIALS,
    Bridge,
    assert_error,
    payload,
    running,
)
from tests.mailmojo.conftest import LIST_ID, ROUTE

PATH = "/clevertap/mailmojo/lists/{}/contacts"


@pytest.fixture
def bridge(client: httpx.AsyncClient, state: BridgeState) -> Bridge:
    return Bridge(client, state)


async def test_profiles_fan_out_to_one_plan_each(bridge: Bridge) -> None:
    body = profiles_body("a@x.io", "B@X.io", key_values={"tags": ["VIP", "paying"]})
    r = await bridge.post(ROUTE, body)
    assert r.status_code == 200, r.text
    deliveries = bridge.deliveries()
    assert r.json() == {
        "accepted": 2,
        "duplicates": 0,
        "skipped": 0,
        "ids": [d.id for d in deliveries],
    }
    assert [d.email for d in deliveries] == ["a@x.io", "b@x.io"]
    assert {(d.upstream, d.operation, d.direction, d.target) for d in deliveries} == {
        ("mailmojo", "mailmojo.list.sync", "clevertap_to_mailmojo", LIST_ID)
    }
    assert payload(deliveries[1]) == {
        "email": "B@X.io",
        "list_id": LIST_ID,
        "candidates": {"first_name": "Name1"},
        "tags": ["ct_paying", "ct_vip"],
        "prefix": "ct_",
    }
    (call,) = bridge.calls()
    assert (call.route, call.target, call.item_count, call.status) == (
        "clevertap.mailmojo.list.sync",
        LIST_ID,
        2,
        "accepted",
    )
    # The CleverTap IDs are learned like on every CleverTap route.
    assert set(bridge.identities()) == {"a@x.io", "b@x.io"}


async def test_a_custom_body_is_one_profile(bridge: Bridge) -> None:
    body = {
        "email": "ann@example.com",
        "clevertap_id": "__ann",
        "identity": "u-42",
        "data": {"first_name": "Anna", "mobile": "+4790000001", "tags": "vip"},
    }
    r = await bridge.post(ROUTE, body)
    assert r.status_code == 200, r.text
    (delivery,) = bridge.deliveries()
    assert payload(delivery) == {
        "email": "ann@example.com",
        "list_id": LIST_ID,
        "candidates": {"first_name": "Anna", "phone": "+4790000001"},
        "tags": ["ct_vip"],
        "prefix": "ct_",
    }


async def test_the_test_call_is_answered_and_not_forwarded(bridge: Bridge) -> None:
    body = {"is_test": True, "profiles": [{"Identity": "UserId", "Email": "User@user.com"}]}
    for _ in range(2):
        r = await bridge.post(ROUTE, body)
        assert r.status_code == 200, r.text
        assert r.json()["test"] is True
    assert bridge.deliveries() == []
    assert [(c.status, c.dedup_key) for c in bridge.calls()] == [("test", None), ("test", None)]


async def test_credentials(client: httpx.AsyncClient, bridge: Bridge) -> None:
    for i, (name, headers) in enumerate(GOOD_CREDENTIALS.items()):
        r = await client.post(ROUTE, json=profiles_body(f"{name}@x.io"), headers=headers)
        assert r.status_code == 200, (name, r.text)
        assert len(bridge.deliveries()) == i + 1
    before = len(bridge.calls())
    for name, headers in BAD_CREDENTIALS.items():
        r = await client.post(ROUTE, json=profiles_body("a@x.io"), headers=headers)
        assert_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Basic"), name
    assert len(bridge.calls()) == before  # nothing stored for a wrong secret


async def test_an_identical_call_is_a_duplicate_and_a_key_overrides_the_body(
    bridge: Bridge,
) -> None:
    body = profiles_body("a@x.io")
    first = (await bridge.post(ROUTE, body)).json()
    again = (await bridge.post(ROUTE, body)).json()
    assert (again["accepted"], again["duplicates"], again["ids"]) == (0, 1, first["ids"])
    other_list = (await bridge.post(PATH.format("43"), body)).json()
    assert other_list["accepted"] == 1
    keyed = (await bridge.post(ROUTE, body, headers={"Idempotency-Key": "k-1"})).json()
    assert keyed["accepted"] == 1
    assert len(bridge.deliveries()) == 3


@pytest.mark.parametrize(
    "list_id", ["newsletter", "4%2E2", "-1", "%D9%A3", "1" * 300, "%2E%2E"], ids=str
)
async def test_a_list_id_that_is_not_a_number_is_422_and_kept(bridge: Bridge, list_id: str) -> None:
    r = await bridge.post(PATH.format(list_id), profiles_body("a@x.io"))
    assert_error(r, 422, "invalid Mailmojo list id")
    assert bridge.deliveries() == []
    (call,) = bridge.calls()
    assert (call.status, call.http_status, call.route) == (
        "rejected",
        422,
        "clevertap.mailmojo.list.sync",
    )


@pytest.mark.parametrize(
    ("content", "content_type", "status", "error"),
    [
        (b'{"email": "a@x.io",', "application/json", 400, "malformed JSON"),
        (b"", "application/json", 400, "malformed JSON"),
        (b'{"email": "a@x.io"}', "text/plain", 415, "unsupported media type"),
        (b'{"targetId": 1}', "application/json", 422, "unknown body shape"),
        (b'{"profiles": [{"Identity": "u"}]}', "application/json", 422, "no valid recipient"),
    ],
    ids=["truncated", "empty", "not-json", "unknown-shape", "no-email"],
)
async def test_bad_input_is_answered_and_kept(
    bridge: Bridge, content: bytes, content_type: str, status: int, error: str
) -> None:
    r = await bridge.post(ROUTE, content=content, headers={"Content-Type": content_type})
    assert_error(r, status, error)
    assert bridge.deliveries() == []
    (call,) = bridge.calls()
    assert (call.status, call.http_status, call.route, call.target) == (
        "rejected",
        status,
        "clevertap.mailmojo.list.sync",
        LIST_ID,
    )
    assert call.body == content.decode()
    assert call.reason is not None
    assert call.reason.startswith(error)


async def test_without_a_token_calls_are_kept_and_readiness_says_why(sqlite_url: str) -> None:
    settings = make_settings(sqlite_url)  # no BRIDGE_MAILMOJO_API_TOKEN
    async with running(settings) as b:
        assert build_mailmojo_deliverer(b.state.engine, settings, "w") is None
        before = (await b.client.get("/readyz")).json()["checks"]["mailmojo"]
        assert before["ok"] is True  # nothing waits for Mailmojo yet
        assert before["configured"] is False
        r = await b.client.post(ROUTE, json=profiles_body("a@x.io"), headers=CT_AUTH)
        assert r.status_code == 200, r.text
        (delivery,) = b.deliveries()
        assert (delivery.state, delivery.upstream) == (State.PENDING, "mailmojo")
        ready = await b.client.get("/readyz")
        assert ready.status_code == 503
        check = ready.json()["checks"]["mailmojo"]
        assert check["ok"] is False
        assert "BRIDGE_MAILMOJO_API_TOKEN" in check["hint"]


async def test_the_route_is_documented(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert "post" in spec["paths"]["/clevertap/mailmojo/lists/{list_id}/contacts"]
    assert json.dumps(spec).count("Mailmojo list") >= 1
