"""CleverTap → bridge over ASGI: every route and body shape, auth, bad input, duplicates and
group commit, asserting on the HTTP answer and on what was committed to the database."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import app.main as main_module
from app.clock import ManualClock, utcnow
from app.config import Settings
from app.db import create_db_engine
from app.identity.models import Identity
from app.inbound.from_clevertap import MAX_SKIPPED_REASONS
from app.main import create_app
from app.outbox.models import Delivery, InboundCall
from app.state import BridgeState
from app.system.migrations import upgrade
from tests.conftest import CT_AUTH, CT_SECRET, make_settings, profiles_body

CAMPAIGN = "/clevertap/campaigns/{}"
START = "/clevertap/journeys/{}/start"
ABORT = "/clevertap/journeys/{}/abort"
ROUTES = {
    CAMPAIGN: ("clevertap.campaign", "campaign.trigger"),
    START: ("clevertap.journey.start", "journey.start"),
    ABORT: ("clevertap.journey.abort", "journey.abort"),
}
ROTATED_SECRET = "ct-rotated-secret"


# --- helpers ---------------------------------------------------------------------------------


@dataclass
class Bridge:
    """A running app, its client and typed views of what it stored."""

    client: httpx.AsyncClient
    state: BridgeState

    async def post(
        self,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        all_headers = {**CT_AUTH, **(headers or {})}
        if content is not None:
            return await self.client.post(path, content=content, headers=all_headers)
        return await self.client.post(path, json=body, headers=all_headers)

    def calls(self) -> list[InboundCall]:
        return all_calls(self.state.engine)

    def deliveries(self) -> list[Delivery]:
        return all_deliveries(self.state.engine)

    def identities(self) -> dict[str, Identity]:
        with Session(self.state.engine) as s:
            return {i.email: i for i in s.scalars(select(Identity))}


def all_calls(engine: Engine) -> list[InboundCall]:
    with Session(engine) as s:
        return list(s.scalars(select(InboundCall).order_by(InboundCall.id)))


def all_deliveries(engine: Engine) -> list[Delivery]:
    with Session(engine) as s:
        return list(s.scalars(select(Delivery).order_by(Delivery.id)))


def payload(delivery: Delivery) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(delivery.payload)
    return value


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def assert_error(response: httpx.Response, status: int, error: str) -> Any:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == error
    return body["detail"]


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Bridge]:
    """The real app on ``settings`` (PostgreSQL is migrated first, as operators must)."""
    if not settings.is_sqlite:
        engine = create_db_engine(settings)
        upgrade(settings, engine)
        engine.dispose()
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bridge.test") as c:
            yield Bridge(c, app.state.bridge)


@pytest.fixture
def bridge(client: httpx.AsyncClient, state: BridgeState) -> Bridge:
    """The shared SQLite app."""
    return Bridge(client, state)


@pytest.fixture
async def anydb(database_url: str) -> AsyncIterator[Bridge]:
    """The app on SQLite and on PostgreSQL."""
    async with running(make_settings(database_url)) as b:
        yield b


# --- routes and the Mailmodo payload of each ---------------------------------------------------


FULL_CUSTOM_BODY: dict[str, Any] = {
    "email": "Ann@Example.com",
    "clevertap_id": "__ann",
    "data": {"first_name": "Ann", "plan": "gold"},
    "campaign_data": {"coupon": "X1"},
    "subject": "Your coupon",
    "replyTo": "help@example.com",
    "fromName": "Shop",
    "addToList": "list-42",
    "reason": "unsubscribed",
    "allowDuplicateEmail": True,
}


async def test_campaign_custom_body_is_stored_with_the_mailmodo_trigger_payload(
    bridge: Bridge,
) -> None:
    r = await bridge.post(
        CAMPAIGN.format("cmp-1"), FULL_CUSTOM_BODY, headers={"X-Request-ID": "req-abc"}
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "req-abc"
    (delivery,) = bridge.deliveries()
    assert r.json() == {"accepted": 1, "duplicates": 0, "skipped": 0, "ids": [delivery.id]}
    assert payload(delivery) == {
        "email": "Ann@Example.com",
        "data": {"first_name": "Ann", "plan": "gold", "clevertap_id": "__ann"},
        "campaign_data": {"coupon": "X1"},
        "subject": "Your coupon",
        "replyTo": "help@example.com",
        "fromName": "Shop",
        "addToList": "list-42",
    }
    assert delivery.operation == "campaign.trigger"
    assert delivery.upstream == "mailmodo"
    assert delivery.direction == "clevertap_to_mailmodo"
    assert delivery.target == "cmp-1"
    assert delivery.email == "ann@example.com"
    assert delivery.clevertap_id == "__ann"
    assert delivery.state == "pending"
    assert delivery.attempts == 0
    (call,) = bridge.calls()
    assert delivery.inbound_call_id == call.id
    assert call.source == "clevertap"
    assert call.route == "clevertap.campaign"
    assert call.target == "cmp-1"
    assert call.status == "accepted"
    assert call.http_status == 200
    assert call.item_count == 1
    assert call.skipped_count == 0
    assert call.body == r.request.content.decode()
    assert call.content_type == "application/json"
    assert call.request_id == "req-abc"
    assert call.dedup_key is not None
    assert call.dedup_key.startswith("clevertap.campaign:cmp-1:")


async def test_journey_start_payload_is_email_data_and_allow_duplicate(bridge: Bridge) -> None:
    r = await bridge.post(START.format("jrn-1"), FULL_CUSTOM_BODY)
    assert r.status_code == 200, r.text
    (delivery,) = bridge.deliveries()
    assert payload(delivery) == {
        "email": "Ann@Example.com",
        "data": {"first_name": "Ann", "plan": "gold", "clevertap_id": "__ann"},
        "allowDuplicateEmail": True,
    }
    assert delivery.operation == "journey.start"
    assert delivery.target == "jrn-1"
    assert bridge.calls()[0].route == "clevertap.journey.start"


async def test_journey_start_without_optional_fields(bridge: Bridge) -> None:
    r = await bridge.post(START.format("j"), {"email": "a@x.io", "allowDuplicateEmail": "yes"})
    assert r.status_code == 200
    (delivery,) = bridge.deliveries()
    assert payload(delivery) == {"email": "a@x.io", "allowDuplicateEmail": True}


async def test_journey_abort_payload_is_email_and_reason(bridge: Bridge) -> None:
    r = await bridge.post(ABORT.format("jrn-2"), FULL_CUSTOM_BODY)
    assert r.status_code == 200, r.text
    (delivery,) = bridge.deliveries()
    assert payload(delivery) == {"email": "Ann@Example.com", "reason": "unsubscribed"}
    assert delivery.operation == "journey.abort"
    assert delivery.clevertap_id == "__ann"


async def test_journey_abort_has_a_default_reason(bridge: Bridge) -> None:
    r = await bridge.post(ABORT.format("jrn-2"), profiles_body("a@x.io", "b@x.io"))
    assert r.status_code == 200
    reasons = [payload(d) for d in bridge.deliveries()]
    assert reasons == [
        {"email": "a@x.io", "reason": "Aborted by CleverTap via ctmm-bridge"},
        {"email": "b@x.io", "reason": "Aborted by CleverTap via ctmm-bridge"},
    ]


@pytest.mark.parametrize("path", list(ROUTES))
async def test_each_route_fans_profiles_out_to_one_delivery_each(bridge: Bridge, path: str) -> None:
    route, operation = ROUTES[path]
    r = await bridge.post(path.format("T-9"), profiles_body("a@x.io", "B@X.io", "c@x.io"))
    assert r.status_code == 200, r.text
    deliveries = bridge.deliveries()
    assert r.json() == {
        "accepted": 3,
        "duplicates": 0,
        "skipped": 0,
        "ids": [d.id for d in deliveries],
    }
    assert len(set(r.json()["ids"])) == 3
    assert [d.email for d in deliveries] == ["a@x.io", "b@x.io", "c@x.io"]
    assert [d.clevertap_id for d in deliveries] == ["__obj0", "__obj1", "__obj2"]
    assert {d.operation for d in deliveries} == {operation}
    assert {d.target for d in deliveries} == {"T-9"}
    (call,) = bridge.calls()
    assert (call.route, call.item_count, call.status) == (route, 3, "accepted")
    if path != ABORT:
        assert payload(deliveries[1]) == {
            "email": "B@X.io",
            "data": {
                "identity": "user-1",
                "first_name": "Name1",
                "promocode": "MT50",
                "clevertap_id": "__obj1",
            },
        }


# --- body shapes -----------------------------------------------------------------------------


async def test_profiles_as_a_single_object(bridge: Bridge) -> None:
    r = await bridge.post(CAMPAIGN.format("c"), profiles_body("solo@x.io", single=True))
    assert r.status_code == 200
    assert r.json()["accepted"] == 1
    (delivery,) = bridge.deliveries()
    assert delivery.email == "solo@x.io"
    assert payload(delivery)["data"]["clevertap_id"] == "__obj0"


async def test_lower_case_sample_with_event_properties(bridge: Bridge) -> None:
    body = {
        "targetId": 1659684581,
        "key_values": {"SomeKey1": "SomeValue1"},
        "profiles": {
            "email": "webhook227@gmail.com",
            "identity": "webhook227@gmail.com",
            "all_identities": ["webhook227@gmail.com"],
            "objectId": "__Webhook227",
            "phone": "+917872483227",
            "name": "Nick",
            "profileData": {"customer type": "gold", "ts": 1586937505801},
            "event_properties": {"Product Id": 1, "date": "$D_1664890781"},
        },
    }
    r = await bridge.post(CAMPAIGN.format("c"), body)
    assert r.status_code == 200
    (delivery,) = bridge.deliveries()
    assert payload(delivery) == {
        "email": "webhook227@gmail.com",
        "data": {
            "name": "Nick",
            "phone": "+917872483227",
            "identity": "webhook227@gmail.com",
            "customer_type": "gold",
            "ts": 1586937505801,
            "somekey1": "SomeValue1",
            "clevertap_id": "__Webhook227",
        },
        "campaign_data": {"product_id": 1, "date": "2022-10-04T13:39:41Z"},
    }


@pytest.mark.parametrize(
    ("email_key", "id_key", "data_key", "identity_key"),
    [
        ("Email", "ObjectId", "ProfileData", "Identity"),
        ("email", "objectId", "profileData", "identity"),
        ("EMAIL", "OBJECTID", "PROFILEDATA", "IDENTITY"),
    ],
)
async def test_profile_keys_in_any_casing(
    bridge: Bridge, email_key: str, id_key: str, data_key: str, identity_key: str
) -> None:
    body = {
        "TargetId": 1,
        "Key_Values": {"Promo": "P"},
        "Profiles": [
            {email_key: "x@y.io", id_key: "__id", data_key: {"Plan": "pro"}, identity_key: "u1"}
        ],
    }
    r = await bridge.post(CAMPAIGN.format("c"), body)
    assert r.status_code == 200, r.text
    (delivery,) = bridge.deliveries()
    assert delivery.clevertap_id == "__id"
    assert payload(delivery)["data"] == {
        "identity": "u1",
        "plan": "pro",
        "promo": "P",
        "clevertap_id": "__id",
    }


async def test_personalisation_mapping_and_precedence(bridge: Bridge) -> None:
    body = {
        "key_values": {"Tier": "call", "Coupon Code": "C1", "clevertap_id": "__forged"},
        "profiles": [
            {
                "Email": "a@x.io",
                "ObjectId": "__real",
                "ProfileData": {
                    "First Name": "Ann",
                    "Tier": "profile",
                    "Address": {"City": "Pune", "Pin": None},
                    "Interests": ["shoes", "bags"],
                    "Signed Up": "$D_1664890781",
                    "Nothing": None,
                },
                "key_values": {"tier": "own"},
            }
        ],
    }
    r = await bridge.post(CAMPAIGN.format("c"), body)
    assert r.status_code == 200
    (delivery,) = bridge.deliveries()
    assert payload(delivery)["data"] == {
        "first_name": "Ann",
        "tier": "own",
        "address_city": "Pune",
        "interests": "shoes, bags",
        "signed_up": "2022-10-04T13:39:41Z",
        "coupon_code": "C1",
        "clevertap_id": "__real",
    }
    assert delivery.clevertap_id == "__real"


async def test_out_of_range_clevertap_date_does_not_fail_the_call(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    # keep the (slow, rich) traceback rendering of the 500 out of the run
    monkeypatch.setattr(main_module, "log", SimpleNamespace(exception=lambda *a, **k: None))
    body = profiles_body("a@x.io", key_values={"When": "$D_99999999999999"})
    r = await bridge.post(CAMPAIGN.format("c"), body)
    assert r.status_code == 200
    (delivery,) = bridge.deliveries()
    assert isinstance(payload(delivery)["data"]["when"], str)


@pytest.mark.parametrize(
    ("body", "expected_id"),
    [
        ({"email": "a@x.io", "clevertap_id": "__top", "data": {"n": 1}}, "__top"),
        ({"email": "a@x.io", "data": {"n": 1, "clevertap_id": "__inside"}}, "__inside"),
        ({"email": "a@x.io", "data": {"n": 1, "CleverTap_ID": "__caps"}}, "__caps"),
        (
            {"email": "a@x.io", "clevertap_id": "${clevertap_id}", "data": {"n": 1}},
            None,
        ),
        (
            {"email": "a@x.io", "data": {"n": 1, "clevertap_id": "{{ Profile.objectId }}"}},
            None,
        ),
        (
            {
                "email": "a@x.io",
                "clevertap_id": "{{ Profile.x }}",
                "data": {"n": 1, "objectId": "__d"},
            },
            "__d",
        ),
    ],
)
async def test_custom_body_clevertap_id_ends_up_inside_data(
    bridge: Bridge, body: dict[str, Any], expected_id: str | None
) -> None:
    r = await bridge.post(CAMPAIGN.format("c"), body)
    assert r.status_code == 200, r.text
    (delivery,) = bridge.deliveries()
    data = payload(delivery)["data"]
    assert delivery.clevertap_id == expected_id
    if expected_id is None:
        assert data == {"n": 1}
        assert bridge.identities() == {}
    else:
        assert data == {"n": 1, "clevertap_id": expected_id}
        assert bridge.identities()["a@x.io"].clevertap_id == expected_id


@pytest.mark.parametrize("path", list(ROUTES))
async def test_test_call_is_answered_200_and_not_forwarded(bridge: Bridge, path: str) -> None:
    body = {
        "is_test": True,
        "targetId": 1234,
        "key_values": {"key": "value"},
        "profiles": [{"Identity": "UserId", "Email": "User@user.com", "push_token": "Token"}] * 5,
    }
    for _ in range(2):
        r = await bridge.post(path.format("t"), body)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["accepted"] == 0
        assert answer["duplicates"] == 0
        assert answer["ids"] == []
    assert bridge.deliveries() == []
    assert bridge.identities() == {}
    calls = bridge.calls()
    # Each test call is kept as such, never as a duplicate of the previous one.
    assert [(c.status, c.http_status, c.item_count, c.dedup_key) for c in calls] == [
        ("test", 200, 0, None),
        ("test", 200, 0, None),
    ]
    assert json.loads(calls[0].body) == body


async def test_test_call_with_nothing_valid_is_still_200(bridge: Bridge) -> None:
    r = await bridge.post(CAMPAIGN.format("t"), {"is_test": "true", "profiles": "garbage"})
    assert r.status_code == 200
    assert bridge.deliveries() == []


# --- identities ------------------------------------------------------------------------------


async def test_identity_is_recorded_lower_cased_and_latest_wins(bridge: Bridge) -> None:
    r = await bridge.post(CAMPAIGN.format("c"), profiles_body("Jack@Gmail.com"))
    assert r.status_code == 200
    first = bridge.identities()
    assert set(first) == {"jack@gmail.com"}
    assert first["jack@gmail.com"].clevertap_id == "__obj0"
    assert first["jack@gmail.com"].source == "clevertap.campaign"

    r = await bridge.post(START.format("j"), profiles_body("JACK@gmail.com", ObjectId="-new-id"))
    assert r.status_code == 200
    second = bridge.identities()
    assert set(second) == {"jack@gmail.com"}
    assert second["jack@gmail.com"].clevertap_id == "-new-id"
    assert second["jack@gmail.com"].source == "clevertap.journey.start"
    assert second["jack@gmail.com"].updated_at >= first["jack@gmail.com"].updated_at


async def test_identities_from_custom_bodies_and_not_without_an_id(bridge: Bridge) -> None:
    await bridge.post(ABORT.format("j"), {"email": "Z@x.io", "clevertap_id": "__z"})
    await bridge.post(CAMPAIGN.format("c"), {"profiles": {"email": "noid@x.io"}})
    ids = {e: i.clevertap_id for e, i in bridge.identities().items()}
    assert ids == {"z@x.io": "__z"}


async def test_same_email_twice_in_one_call_keeps_the_last_id(bridge: Bridge) -> None:
    body = {
        "profiles": [
            {"email": "dup@x.io", "objectId": "__first"},
            {"email": "DUP@x.io", "objectId": "__second"},
        ]
    }
    r = await bridge.post(CAMPAIGN.format("c"), body)
    assert r.json()["accepted"] == 2
    assert bridge.identities()["dup@x.io"].clevertap_id == "__second"


# --- skipped recipients ------------------------------------------------------------------------


async def test_skipped_recipients_are_counted_with_reasons(bridge: Bridge) -> None:
    body = profiles_body("ok@x.io", None, "not-an-email", "ok2@x.io")
    r = await bridge.post(CAMPAIGN.format("c"), body)
    assert r.status_code == 200
    answer = r.json()
    assert answer["accepted"] == 2
    assert answer["skipped"] == 2
    assert answer["skipped_reasons"] == [
        {"index": 1, "reason": "no email"},
        {"index": 2, "reason": "invalid email"},
    ]
    assert [d.email for d in bridge.deliveries()] == ["ok@x.io", "ok2@x.io"]
    (call,) = bridge.calls()
    assert call.status == "accepted"
    assert call.skipped_count == 2
    assert call.item_count == 2
    assert call.reason == "#1: no email; #2: invalid email"


async def test_the_reasons_listed_are_bounded_the_count_is_not(bridge: Bridge) -> None:
    """A call of thousands of entries without an email is answered in a few kilobytes: the
    first ``MAX_SKIPPED_REASONS`` reasons, how many more there were, the whole count."""
    entries: list[Any] = [0] * 5000
    r = await bridge.post(CAMPAIGN.format("c"), {"profiles": entries})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert len(detail["skipped"]) == MAX_SKIPPED_REASONS
    assert detail["skipped_omitted"] == 5000 - MAX_SKIPPED_REASONS
    assert len(r.content) < 10_000

    r = await bridge.post(CAMPAIGN.format("c"), profiles_body("ok@x.io", *[None] * 5000))
    assert r.status_code == 200
    answer = r.json()
    assert (answer["accepted"], answer["skipped"]) == (1, 5000)
    assert [s["index"] for s in answer["skipped_reasons"]] == list(range(1, 101))
    assert answer["skipped_reasons_omitted"] == 5000 - MAX_SKIPPED_REASONS
    assert len(r.content) < 10_000


@pytest.mark.parametrize(
    ("body", "skipped"),
    [
        (profiles_body(None, "bad@", ""), ["no email", "invalid email", "no email"]),
        ({"email": "${user_email}", "data": {}}, ["invalid email"]),
        ({"email": ""}, ["no email"]),
        ({"profiles": []}, []),
        ({"profiles": [1, "x"]}, ["profile is not an object", "profile is not an object"]),
    ],
)
async def test_nothing_valid_is_422_with_reasons_and_kept_rejected(
    bridge: Bridge, body: dict[str, Any], skipped: list[str]
) -> None:
    r = await bridge.post(CAMPAIGN.format("c"), body)
    detail = assert_error(r, 422, "no valid recipient")
    assert [s["reason"] for s in detail["skipped"]] == skipped
    assert bridge.deliveries() == []
    assert bridge.identities() == {}
    (call,) = bridge.calls()
    assert call.status == "rejected"
    assert call.http_status == 422
    assert call.reason is not None
    assert call.reason.startswith("no valid recipient")
    assert call.dedup_key is None
    assert json.loads(call.body) == body


# --- authentication ----------------------------------------------------------------------------


GOOD_CREDENTIALS: dict[str, dict[str, str]] = {
    "header": {"X-Bridge-Secret": CT_SECRET},
    "header-rotated": {"X-Bridge-Secret": ROTATED_SECRET},
    "basic": basic("clevertap", CT_SECRET),
    "basic-rotated": basic("anyone-at-all", ROTATED_SECRET),
    "basic-no-user": basic("", CT_SECRET),
}

BAD_CREDENTIALS: dict[str, dict[str, str | bytes]] = {
    "none": {},
    "wrong-header": {"X-Bridge-Secret": "wrong"},
    "wrong-case": {"X-Bridge-Secret": CT_SECRET.upper()},
    "wrong-header-beats-good-basic": {"X-Bridge-Secret": "wrong", **basic("u", CT_SECRET)},
    "wrong-basic": basic("u", "wrong"),
    "secret-as-user": basic(CT_SECRET, ""),
    "garbled-basic": {"Authorization": "Basic %%%garbled%%%"},
    "non-ascii-basic": {"Authorization": b"Basic \xc3\xa9"},
    "non-ascii-basic-lower": {"Authorization": b"basic \xe9"},
    "basic-without-colon": {
        "Authorization": "Basic " + base64.b64encode(CT_SECRET.encode()).decode()
    },
    "bearer": {"Authorization": f"Bearer {CT_SECRET}"},
    "bare-secret": {"Authorization": CT_SECRET},
    "mailmodo-secret": {"X-Bridge-Secret": "mm-test-secret"},
    "admin-token": {"X-Bridge-Secret": "admin-test-token"},
}


async def test_accepted_credentials(client: httpx.AsyncClient, bridge: Bridge) -> None:
    for i, (name, headers) in enumerate(GOOD_CREDENTIALS.items()):
        body = profiles_body(f"{name}@x.io")
        r = await client.post(CAMPAIGN.format("c"), json=body, headers=headers)
        assert r.status_code == 200, (name, r.text)
        assert len(bridge.deliveries()) == i + 1, name


@pytest.mark.parametrize(
    "body",
    [profiles_body("a@x.io"), b"{not json", b"x" * 2_000_000],
    ids=["valid", "malformed", "huge"],
)
async def test_bad_credentials_are_401_and_nothing_is_stored(
    client: httpx.AsyncClient, bridge: Bridge, body: Any
) -> None:
    for name, headers in BAD_CREDENTIALS.items():
        for path in ROUTES:
            if isinstance(body, bytes):
                r = await client.post(path.format("c"), content=body, headers=headers)
            else:
                r = await client.post(path.format("c"), json=body, headers=headers)
            detail = assert_error(r, 401, "unauthorized")
            assert "X-Bridge-Secret" in detail, name
            assert r.headers["www-authenticate"].startswith("Basic"), name
    assert bridge.calls() == []
    assert bridge.deliveries() == []
    assert bridge.identities() == {}


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "detail_part"),
    [
        (b'{"email": "a@x.io",', ""),
        (b"{'email': 'a@x.io'}", ""),
        (b"", "the body is empty"),
        (b"   \n", "the body is empty"),
    ],
    ids=["truncated", "single-quotes", "empty", "blank"],
)
async def test_malformed_json_is_400_and_kept(
    bridge: Bridge, content: bytes, detail_part: str
) -> None:
    r = await bridge.post(
        CAMPAIGN.format("c"), content=content, headers={"Content-Type": "application/json"}
    )
    detail = assert_error(r, 400, "malformed JSON")
    assert detail_part in detail
    assert bridge.deliveries() == []
    (call,) = bridge.calls()
    assert call.status == "rejected"
    assert call.http_status == 400
    assert call.body == content.decode()
    assert call.body_truncated is False
    assert call.reason is not None
    assert call.reason.startswith("malformed JSON")
    assert call.content_type == "application/json"
    assert call.target == "c"
    assert call.route == "clevertap.campaign"


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "text/html; charset=utf-8"],
)
async def test_non_json_content_type_is_415_and_kept(bridge: Bridge, content_type: str) -> None:
    content = b'{"email": "a@x.io"}'
    r = await bridge.post(
        START.format("j"), content=content, headers={"Content-Type": content_type}
    )
    detail = assert_error(r, 415, "unsupported media type")
    assert detail == {"content_type": content_type, "expected": "application/json"}
    assert bridge.deliveries() == []
    (call,) = bridge.calls()
    assert (call.status, call.http_status, call.content_type) == ("rejected", 415, content_type)
    assert call.body == content.decode()
    assert call.reason is not None
    assert call.reason.startswith("unsupported media type")


@pytest.mark.parametrize(
    ("headers", "error", "detail_key"),
    [
        ({"Content-Encoding": "gzip"}, "unsupported content encoding", "content_encoding"),
        ({"Transfer-Encoding": "gzip, chunked"}, "unsupported transfer encoding", None),
        ({"Content-Type": "application/json; charset=latin-1"}, "unsupported charset", None),
        ({"Content-Type": 'application/json; charset="UTF-16"'}, "unsupported charset", None),
    ],
)
async def test_compressed_or_non_utf8_body_is_415_and_kept(
    bridge: Bridge, headers: dict[str, str], error: str, detail_key: str | None
) -> None:
    """Said plainly instead of "malformed JSON", which sent senders looking at their JSON."""
    r = await bridge.post(CAMPAIGN.format("c"), content=b'{"email": "a@x.io"}', headers=headers)
    detail = assert_error(r, 415, error)
    if detail_key is not None:
        assert detail[detail_key] == headers["Content-Encoding"]
    assert bridge.deliveries() == []
    (call,) = bridge.calls()
    assert (call.status, call.http_status) == ("rejected", 415)
    assert call.reason is not None
    assert call.reason.startswith(error)


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "application/json; charset=utf-8",
        'application/json; Charset="UTF8"',
        "application/json; boundary=x",
        "application/vnd.ct+json",
    ],
)
async def test_json_or_missing_content_type_is_accepted(
    bridge: Bridge, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    headers["Content-Encoding"] = "identity"
    r = await bridge.post(CAMPAIGN.format("c"), content=b'{"email": "a@x.io"}', headers=headers)
    assert r.status_code == 200, r.text
    assert bridge.calls()[0].content_type == content_type


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"targetId": 1, "key_values": {}}, "unknown body shape"),
        ({}, "unknown body shape"),
        ([profiles_body("a@x.io")], "expected a JSON object"),
        ("a@x.io", "expected a JSON object"),
        (None, "expected a JSON object"),
        ({"profiles": "a@x.io"}, "'profiles' must be an array or an object"),
        ({"email": "a@x.io", "data": ["x"]}, "'data' must be an object"),
        ({"email": "a@x.io", "campaign_data": "x"}, "'campaign_data' must be an object"),
    ],
)
async def test_unknown_shape_is_422_and_kept(bridge: Bridge, body: Any, error: str) -> None:
    r = await bridge.post(
        ABORT.format("j"),
        content=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    detail = assert_error(r, 422, error)
    assert detail is not None
    assert bridge.deliveries() == []
    (call,) = bridge.calls()
    assert (call.status, call.http_status) == ("rejected", 422)
    assert call.reason is not None
    assert call.reason.startswith(error)
    assert call.route == "clevertap.journey.abort"


async def test_a_big_rejected_body_is_kept_truncated(bridge: Bridge) -> None:
    limit = bridge.state.settings.rejected_body_bytes
    content = b'{"email": "a@x.io", "pad": "' + b"p" * (limit * 2)  # malformed on purpose
    r = await bridge.post(
        CAMPAIGN.format("c"), content=content, headers={"Content-Type": "application/json"}
    )
    assert_error(r, 400, "malformed JSON")
    (call,) = bridge.calls()
    assert call.body_truncated is True
    assert call.body == content[:limit].decode()


@pytest.fixture
async def small(sqlite_url: str) -> AsyncIterator[Bridge]:
    """An app that takes bodies of at most 2 KiB."""
    async with running(make_settings(sqlite_url, max_body_bytes=2048)) as b:
        yield b


async def test_body_over_the_limit_is_413_and_kept_truncated(small: Bridge) -> None:
    body = profiles_body("a@x.io", Pad="x" * 3000)
    r = await small.post(CAMPAIGN.format("c"), body)
    detail = assert_error(r, 413, "body too large")
    assert detail["limit_bytes"] == 2048
    assert detail["received_bytes_at_least"] > 2048
    assert small.deliveries() == []
    (call,) = small.calls()
    assert (call.status, call.http_status) == ("rejected", 413)
    assert call.body_truncated is True
    assert len(call.body) <= 2048
    assert call.reason is not None
    assert call.reason.startswith("body too large")


async def test_a_413_with_content_length_keeps_the_start_of_the_body(small: Bridge) -> None:
    r = await small.post(CAMPAIGN.format("c"), profiles_body("a@x.io", Pad="x" * 3000))
    assert r.status_code == 413
    (call,) = small.calls()
    assert call.body
    assert r.request.content.decode().startswith(call.body)


async def test_a_sender_waiting_for_100_continue_is_refused_before_its_body(
    small: Bridge,
) -> None:
    """``Expect: 100-continue`` with a Content-Length over the limit: 413 at once, nothing of
    the body read (reading would tell the sender to send it all), kept as refused."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"y" * 1000

    r = await small.client.post(
        CAMPAIGN.format("c"),
        content=chunks(),
        headers={
            **CT_AUTH,
            "Content-Type": "application/json",
            "Content-Length": "10000",
            "Expect": "100-continue",
        },
    )
    assert_error(r, 413, "body too large")
    (call,) = small.calls()
    assert (call.http_status, call.body, call.body_truncated) == (413, "", True)


async def test_streamed_body_over_the_limit_is_413_and_keeps_what_was_read(
    small: Bridge,
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"y" * 1000

    r = await small.client.post(
        CAMPAIGN.format("c"),
        content=chunks(),
        headers={**CT_AUTH, "Content-Type": "application/json"},
    )
    assert_error(r, 413, "body too large")
    (call,) = small.calls()
    assert call.http_status == 413
    assert call.body_truncated is True
    assert 0 < len(call.body) <= small.state.settings.rejected_body_bytes
    assert set(call.body) == {"y"}


async def test_body_exactly_at_the_limit_is_accepted(small: Bridge) -> None:
    base = json.dumps({"email": "a@x.io", "data": {"pad": ""}}).encode()
    content = base.replace(b'"pad": ""', b'"pad": "' + b"z" * (2048 - len(base)) + b'"')
    assert len(content) == 2048
    r = await small.post(
        CAMPAIGN.format("c"), content=content, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 200, r.text
    r = await small.post(
        CAMPAIGN.format("c"), content=content + b" ", headers={"Content-Type": "application/json"}
    )
    assert_error(r, 413, "body too large")


async def test_writer_down_is_503_with_retry_after(bridge: Bridge) -> None:
    await asyncio.to_thread(bridge.state.writer.stop)
    r = await bridge.post(CAMPAIGN.format("c"), profiles_body("a@x.io"))
    assert_error(r, 503, "temporarily unavailable")
    assert r.headers["retry-after"] == "5"


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("target", "headers", "email"),
    [
        ("t" * 300, {}, "a@x.io"),
        ("t" * 100, {"Idempotency-Key": "k" * 200}, "a@x.io"),
        ("c%00", {}, "a@x.io"),
        ("c", {}, "a\x00b@x.io"),
    ],
    ids=["long-target", "long-idempotency-key", "nul-in-target", "nul-in-email"],
)
async def test_unstorable_values_are_not_a_retryable_503_on_postgres(
    postgres_server: str, target: str, headers: dict[str, str], email: str
) -> None:
    from tests.conftest import _reset_postgres

    _reset_postgres(postgres_server)
    async with running(make_settings(postgres_server)) as b:
        r = await b.post(CAMPAIGN.format(target), profiles_body(email), headers=headers)
        assert r.status_code < 500, r.text
        assert len(b.calls()) == 1


async def test_other_methods_and_paths_answer_json(bridge: Bridge) -> None:
    r = await bridge.client.get(CAMPAIGN.format("c"), headers=CT_AUTH)
    assert_error(r, 405, "Method Not Allowed")
    r = await bridge.post("/clevertap/nowhere", {"email": "a@x.io"})
    assert_error(r, 404, "Not Found")
    assert bridge.calls() == []


# --- duplicates --------------------------------------------------------------------------------


async def test_identical_call_is_a_duplicate_with_the_same_ids(anydb: Bridge) -> None:
    body = profiles_body("a@x.io", "b@x.io", None)
    first = await anydb.post(CAMPAIGN.format("c"), body)
    assert first.status_code == 200
    assert first.json()["accepted"] == 2
    second = await anydb.post(CAMPAIGN.format("c"), body)
    assert second.status_code == 200
    assert second.json() | {"skipped_reasons": None} == {
        "accepted": 0,
        "duplicates": 2,
        "skipped": 1,
        "ids": first.json()["ids"],
        "skipped_reasons": None,
    }
    assert len(anydb.deliveries()) == 2
    original, duplicate = anydb.calls()
    assert original.status == "accepted"
    assert duplicate.status == "duplicate"
    assert duplicate.http_status == 200
    assert duplicate.dedup_key is None
    assert duplicate.reason == f"duplicate of call {original.id}"
    assert duplicate.item_count == 2


async def test_identical_custom_body_on_each_route(bridge: Bridge) -> None:
    for path in ROUTES:
        ids = []
        for _ in range(3):
            r = await bridge.post(path.format("same"), {"email": "a@x.io"})
            assert r.status_code == 200
            ids.append(r.json()["ids"])
        assert ids[0] == ids[1] == ids[2]
    assert len(bridge.deliveries()) == 3
    assert [c.status for c in bridge.calls()].count("duplicate") == 6


async def test_idempotency_key_overrides_the_body_hash(anydb: Bridge) -> None:
    a = await anydb.post(
        CAMPAIGN.format("c"), profiles_body("a@x.io"), headers={"Idempotency-Key": "k1"}
    )
    b = await anydb.post(
        CAMPAIGN.format("c"), profiles_body("b@x.io"), headers={"Idempotency-Key": "k1"}
    )
    assert a.json()["accepted"] == 1
    assert b.json() == {"accepted": 0, "duplicates": 1, "skipped": 0, "ids": a.json()["ids"]}
    assert [d.email for d in anydb.deliveries()] == ["a@x.io"]
    # the duplicate teaches nothing either
    assert set(anydb.identities()) == {"a@x.io"}

    same = profiles_body("c@x.io")
    c = await anydb.post(CAMPAIGN.format("c"), same, headers={"Idempotency-Key": "k2"})
    d = await anydb.post(CAMPAIGN.format("c"), same, headers={"Idempotency-Key": "k3"})
    assert c.json()["accepted"] == 1
    assert d.json()["accepted"] == 1
    assert c.json()["ids"] != d.json()["ids"]
    assert len(anydb.deliveries()) == 3


async def test_same_body_on_another_target_or_route_is_not_a_duplicate(bridge: Bridge) -> None:
    body = profiles_body("a@x.io")
    answers = [
        (await bridge.post(CAMPAIGN.format("c1"), body)).json(),
        (await bridge.post(CAMPAIGN.format("c2"), body)).json(),
        (await bridge.post(START.format("c1"), body)).json(),
        (await bridge.post(ABORT.format("c1"), body)).json(),
    ]
    assert [a["accepted"] for a in answers] == [1, 1, 1, 1]
    # and the Idempotency-Key is scoped the same way
    r = await bridge.post(CAMPAIGN.format("c3"), body, headers={"Idempotency-Key": "k"})
    r2 = await bridge.post(CAMPAIGN.format("c4"), body, headers={"Idempotency-Key": "k"})
    assert (r.json()["accepted"], r2.json()["accepted"]) == (1, 1)
    assert len(bridge.deliveries()) == 6


async def test_a_byte_different_body_is_not_a_duplicate(bridge: Bridge) -> None:
    a = await bridge.post(CAMPAIGN.format("c"), content=b'{"email":"a@x.io"}')
    b = await bridge.post(CAMPAIGN.format("c"), content=b'{"email": "a@x.io"}')
    assert (a.json()["accepted"], b.json()["accepted"]) == (1, 1)


async def test_rejected_calls_do_not_count_for_dedup(bridge: Bridge) -> None:
    for _ in range(2):
        r = await bridge.post(CAMPAIGN.format("c"), {"email": "nope"})
        assert r.status_code == 422
    assert [c.status for c in bridge.calls()] == ["rejected", "rejected"]


@pytest.fixture
async def short_window(sqlite_url: str) -> AsyncIterator[Bridge]:
    async with running(make_settings(sqlite_url, dedup_window_seconds=1)) as b:
        yield b


async def test_outside_the_window_the_same_call_is_accepted_again(
    short_window: Bridge, clock: ManualClock
) -> None:
    body = profiles_body("a@x.io")
    first = await short_window.post(CAMPAIGN.format("c"), body)
    again = await short_window.post(CAMPAIGN.format("c"), body)
    assert again.json()["duplicates"] == 1

    # The clock moves on for everybody: the handler stamps the call, the writer the window.
    clock.advance(5)
    third = await short_window.post(CAMPAIGN.format("c"), body)
    assert third.json()["accepted"] == 1
    assert third.json()["ids"] != first.json()["ids"]
    # ... and within the new window it is a duplicate of the new call
    fourth = await short_window.post(CAMPAIGN.format("c"), body)
    assert fourth.json() == {
        "accepted": 0,
        "duplicates": 1,
        "skipped": 0,
        "ids": third.json()["ids"],
    }
    calls = short_window.calls()
    assert [c.status for c in calls] == ["accepted", "duplicate", "accepted", "duplicate"]
    # the old call keeps its row but gave up its key
    assert calls[0].dedup_key is None
    assert calls[2].dedup_key is not None
    assert len(short_window.deliveries()) == 2


async def test_window_expiry_just_past_the_window(short_window: Bridge, clock: ManualClock) -> None:
    body = {"email": "a@x.io"}
    assert (await short_window.post(CAMPAIGN.format("c"), body)).json()["accepted"] == 1
    clock.advance(0.5)
    assert (await short_window.post(CAMPAIGN.format("c"), body)).json()["duplicates"] == 1
    clock.advance(0.6)  # 1.1 s after the first call: past the 1 s window
    assert (await short_window.post(CAMPAIGN.format("c"), body)).json()["accepted"] == 1


async def test_dedup_window_zero_turns_dedup_off(sqlite_url: str) -> None:
    async with running(make_settings(sqlite_url, dedup_window_seconds=0)) as b:
        for _ in range(3):
            assert (await b.post(CAMPAIGN.format("c"), {"email": "a@x.io"})).json()["accepted"] == 1
        assert [c.dedup_key for c in b.calls()] == [None, None, None]


async def test_concurrent_identical_calls_are_accepted_exactly_once(anydb: Bridge) -> None:
    body = profiles_body("a@x.io", "b@x.io")
    answers = await asyncio.gather(*(anydb.post(CAMPAIGN.format("c"), body) for _ in range(10)))
    assert {a.status_code for a in answers} == {200}
    bodies = [a.json() for a in answers]
    assert sorted(b["accepted"] for b in bodies) == [0] * 9 + [2]
    assert sorted(b["duplicates"] for b in bodies) == [0] + [2] * 9
    assert len({tuple(b["ids"]) for b in bodies}) == 1
    assert len(anydb.deliveries()) == 2
    statuses = [c.status for c in anydb.calls()]
    assert statuses.count("accepted") == 1
    assert statuses.count("duplicate") == 9


async def test_two_replicas_racing_on_one_call_accept_it_once(database_url: str) -> None:
    settings = make_settings(database_url)
    body = profiles_body("race@x.io")
    async with running(settings) as one, running(settings) as two:
        answers = await asyncio.gather(
            *((one if i % 2 else two).post(CAMPAIGN.format("c"), body) for i in range(12))
        )
        assert {a.status_code for a in answers} == {200}
        assert sorted(a.json()["accepted"] for a in answers) == [0] * 11 + [1]
        assert len(one.deliveries()) == 1
        assert [c.status for c in one.calls()].count("accepted") == 1


# --- group commit and durability ----------------------------------------------------------------


async def test_many_concurrent_distinct_calls_are_all_stored(anydb: Bridge) -> None:
    n = 200
    answers = await asyncio.gather(
        *(anydb.post(CAMPAIGN.format("c"), profiles_body(f"user{i}@x.io")) for i in range(n))
    )
    assert {a.status_code for a in answers} == {200}
    ids = [a.json()["ids"][0] for a in answers]
    assert all(a.json()["accepted"] == 1 for a in answers)
    assert len(set(ids)) == n
    deliveries = anydb.deliveries()
    assert sorted(d.id for d in deliveries) == sorted(ids)
    # each answer names the delivery of its own recipient
    by_id = {d.id: d.email for d in deliveries}
    assert [by_id[i] for i in ids] == [f"user{i}@x.io" for i in range(n)]
    assert len(anydb.calls()) == n
    assert len(anydb.identities()) == n


async def test_the_200_comes_after_the_commit(anydb: Bridge) -> None:
    url = anydb.state.settings.database_url
    r = await anydb.post(CAMPAIGN.format("c"), profiles_body("a@x.io", "b@x.io"))
    assert r.status_code == 200
    fresh = create_engine(url)
    try:
        with fresh.connect() as conn:
            stored = (
                conn.execute(select(Delivery.id).where(Delivery.id.in_(r.json()["ids"])))
                .scalars()
                .all()
            )
            calls = conn.execute(select(func.count()).select_from(InboundCall)).scalar_one()
            idents = conn.execute(select(func.count()).select_from(Identity)).scalar_one()
    finally:
        fresh.dispose()
    assert sorted(stored) == sorted(r.json()["ids"])
    assert (calls, idents) == (1, 2)


async def test_timestamps_are_utc_and_deliveries_are_due_now(bridge: Bridge) -> None:
    before = utcnow()
    await bridge.post(CAMPAIGN.format("c"), profiles_body("a@x.io"))
    after = utcnow()
    (call,) = bridge.calls()
    (delivery,) = bridge.deliveries()
    for stamp in (call.received_at, delivery.created_at, delivery.next_attempt_at):
        assert isinstance(stamp, datetime)
        assert stamp.utcoffset() == timedelta(0)
        assert before - timedelta(seconds=1) <= stamp <= after + timedelta(seconds=1)
