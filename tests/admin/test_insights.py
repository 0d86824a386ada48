"""What the console reads from ``/admin``, on SQLite and PostgreSQL over the real app: the
overview (counts per lane, lag, per-minute series, pauses), failures grouped like issues with
a replay body that picks exactly the group, the status-code and reason filters, a person's
page, and the upstream request shown with a delivery."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager

from app.clevertap.consent import consent_payload, endpoint_of
from app.clock import ManualClock
from app.db import create_db_engine
from app.main import create_app
from app.outbox.models import CallStatus, Operation, Source, State
from app.state import BridgeState
from app.system import repository as system_repo
from app.system.migrations import upgrade
from tests.admin.conftest import AUTH, DONE
from tests.conftest import ADMIN_TOKEN, make_settings
from tests.factories import (
    add_call,
    add_deliveries,
    add_delivery,
    add_events,
    add_heartbeat,
    add_identity,
    add_parked,
    set_rows,
)

Running = tuple[httpx.AsyncClient, BridgeState]


@pytest.fixture
async def running(database_url: str) -> AsyncIterator[Running]:
    settings = make_settings(database_url)
    engine = create_db_engine(settings)
    upgrade(settings, engine)
    engine.dispose()
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bridge.test") as c:
            yield c, application.state.bridge


async def get(client: httpx.AsyncClient, path: str, **params: Any) -> Any:
    resp = await client.get(path, params=params, headers=AUTH)
    assert resp.status_code == 200, resp.text
    return resp.json()


# --- auth and schema ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/admin/overview", "/admin/failures", "/admin/person?email=a@example.com"]
)
@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN_TOKEN}]
)
async def test_console_reads_need_the_token(
    client: httpx.AsyncClient, path: str, headers: dict[str, str]
) -> None:
    resp = await client.get(path, headers=headers)
    assert resp.status_code == 401
    assert resp.json()["error"] == "unauthorized"
    assert resp.headers["www-authenticate"].startswith("Bearer")


async def test_openapi_types_every_console_answer(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    for path, model in [
        ("/admin/overview", "Overview"),
        ("/admin/failures", "FailureGroups"),
        ("/admin/person", "Person"),
    ]:
        ok = spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
        assert ok["schema"]["$ref"].endswith("/" + model)
        assert spec["paths"][path]["get"]["security"] == [{"HTTPBearer": []}]
    detail = spec["components"]["schemas"]["DeliveryDetail"]["properties"]
    assert "upstream_request" in detail
    assert "/console" not in spec["paths"]


# --- overview ----------------------------------------------------------------------------------


async def test_overview_counts_lag_pauses_and_minutes(running: Running, clock: ManualClock) -> None:
    client, state = running
    engine = state.engine
    now = clock.freeze().replace(second=30, microsecond=0)
    clock.set(now)
    minute = now.replace(second=0)
    add_deliveries(
        engine, "a@x.io", "b@x.io", state=State.PENDING, created_at=now - timedelta(hours=2)
    )
    add_deliveries(engine, "c@x.io", state=State.PENDING, created_at=now - timedelta(minutes=5))
    done = add_deliveries(engine, "d@x.io", "e@x.io", "f@x.io", state=State.DELIVERED)
    set_rows(engine, done[:2], updated_at=minute + timedelta(seconds=10))  # this minute
    set_rows(engine, done[2:], updated_at=minute - timedelta(minutes=59))  # first bucket
    old = add_deliveries(engine, "g@x.io", state=State.DELIVERED)
    set_rows(engine, old, updated_at=minute - timedelta(minutes=60, seconds=1))  # before it
    dead = add_deliveries(engine, "h@x.io", state=State.DEAD)
    set_rows(engine, dead, updated_at=minute - timedelta(minutes=3))
    add_parked(engine, "p@x.io")
    add_events(engine, "q@x.io", state=State.FAILED, clevertap_id="__q")
    add_call(engine, status=CallStatus.REJECTED, http_status=422, reason="no email")
    add_heartbeat(engine, "w1", beat_at=now - timedelta(seconds=4))
    with engine.begin() as conn:
        system_repo.set_paused(
            conn, "clevertap", reason="HTTP 401: bad passcode", fingerprint=None, now=now,
            probe_in=60,
        )  # fmt: skip

    body = await get(client, "/admin/overview")
    lanes = {lane["upstream"]: lane for lane in body["lanes"]}
    assert list(lanes) == ["mailmodo", "clevertap", "mailmojo"]
    mm, ct = lanes["mailmodo"], lanes["clevertap"]
    assert lanes["mailmojo"]["direction"] == "clevertap_to_mailmojo"
    assert lanes["mailmojo"]["received"] == 0
    assert (mm["direction"], mm["upstream"]) == ("clevertap_to_mailmodo", "mailmodo")
    assert (ct["direction"], ct["upstream"]) == ("mailmodo_to_clevertap", "clevertap")
    assert mm["received"] == 8
    assert mm["states"] == {
        "pending": 3, "delivered": 4, "failed": 0, "dead": 1, "parked": 0, "dropped": 0,
        "cancelled": 0,
    }  # fmt: skip
    assert mm["oldest_pending_age_seconds"] == pytest.approx(7200, abs=1)
    assert mm["delivered_last_hour"] == 3
    assert mm["paused"] == {"paused": False, "reason": None, "since": None, "next_probe_at": None}
    assert ct["states"]["parked"] == 1
    assert ct["states"]["failed"] == 1
    assert ct["oldest_pending_age_seconds"] is None
    assert ct["paused"]["paused"] is True
    assert ct["paused"]["reason"] == "HTTP 401: bad passcode"

    per = body["per_minute"]
    assert per["minutes"] == 60
    assert per["since"].startswith((minute - timedelta(minutes=59)).strftime("%Y-%m-%dT%H:%M:00"))
    delivered = per["delivered"]["mailmodo"]
    assert len(delivered) == 60
    assert (delivered[0], delivered[59], sum(delivered)) == (1, 2, 3)
    failed = per["failed"]["mailmodo"]
    assert failed[56] == 1
    assert sum(failed) == 1
    assert per["failed"]["clevertap"][59] == 1  # the failed upload, changed "now"
    assert sum(per["delivered"]["clevertap"]) == 0
    assert body["rejected_calls"] == 1
    assert [w["worker_id"] for w in body["workers"]] == ["w1"]
    assert body["workers"][0]["age_seconds"] == pytest.approx(4, abs=0.5)


async def test_overview_of_an_empty_bridge(running: Running) -> None:
    client, _ = running
    body = await get(client, "/admin/overview")
    assert [lane["received"] for lane in body["lanes"]] == [0, 0, 0]
    assert all(lane["oldest_pending_age_seconds"] is None for lane in body["lanes"])
    assert body["per_minute"]["delivered"] == {
        "mailmodo": [0] * 60,
        "clevertap": [0] * 60,
        "mailmojo": [0] * 60,
    }
    assert body["rejected_calls"] == 0
    assert body["workers"] == []


# --- failures ----------------------------------------------------------------------------------


async def test_failures_grouped_and_each_group_replays_exactly_its_items(
    running: Running, clock: ManualClock
) -> None:
    client, state = running
    engine = state.engine
    now = clock.freeze()
    invalid = add_deliveries(
        engine, "a@x.io", "b@x.io", state=State.FAILED, last_status_code=400, reason="bad email"
    )
    set_rows(engine, invalid[:1], updated_at=now - timedelta(hours=3))
    set_rows(engine, invalid[1:], updated_at=now - timedelta(hours=1))
    dead_503 = add_deliveries(
        engine, "c@x.io", state=State.DEAD, last_status_code=503, reason="unavailable"
    )
    set_rows(engine, dead_503, updated_at=now - timedelta(minutes=30))
    timeouts = add_deliveries(
        engine, "d@x.io", "e@x.io", state=State.DEAD, last_status_code=None, reason="timeout"
    )
    set_rows(engine, timeouts, updated_at=now - timedelta(minutes=10))
    no_reason = add_deliveries(engine, "f@x.io", state=State.FAILED, last_status_code=400)
    set_rows(engine, no_reason, updated_at=now - timedelta(minutes=20), reason=None)
    # Same status and reason, other upstream: its own group.
    add_events(engine, "g@x.io", state=State.FAILED, last_status_code=400, reason="bad email")
    # Not failures: a delivered and a pending item with the same reason.
    add_deliveries(
        engine, "h@x.io", state=State.DELIVERED, last_status_code=400, reason="bad email"
    )
    add_deliveries(engine, "i@x.io", state=State.PENDING, last_status_code=400, reason="bad email")

    body = await get(client, "/admin/failures")
    keys = [(g["upstream"], g["status_code"], g["reason"], g["count"]) for g in body["groups"]]
    assert keys == [  # the most recent last failure first
        ("clevertap", 400, "bad email", 1),
        ("mailmodo", None, "timeout", 2),
        ("mailmodo", 400, None, 1),
        ("mailmodo", 503, "unavailable", 1),
        ("mailmodo", 400, "bad email", 2),
    ]
    assert body["next_offset"] is None
    group = body["groups"][4]
    assert (group["failed"], group["dead"]) == (2, 0)
    assert group["first_seen"].startswith((now - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M"))
    assert group["last_seen"].startswith((now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"))
    assert (body["groups"][1]["failed"], body["groups"][1]["dead"]) == (0, 2)

    # Each group's replay body counts exactly its own items (null code and reason included).
    for g in body["groups"]:
        resp = await client.post(
            "/admin/replay", json={**g["replay"], "dry_run": True}, headers=AUTH
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["matched"] == g["count"], g
    # The list behind "List these": the same items.
    listed = await get(
        client, "/admin/deliveries", upstream="mailmodo", status_code=0, reason="timeout",
        state=["failed", "dead"],
    )  # fmt: skip
    assert sorted(i["id"] for i in listed["items"]) == timeouts
    blank = await get(client, "/admin/deliveries", status_code=400, reason="")
    assert [i["id"] for i in blank["items"]] == no_reason

    # Replaying one group for real leaves the others alone.
    resp = await client.post("/admin/replay", json=body["groups"][1]["replay"], headers=AUTH)
    assert resp.json() == {"matched": 2, "replayed": 2, "dry_run": False, **DONE}
    after = await get(client, "/admin/failures")
    assert [g["reason"] for g in after["groups"]].count("timeout") == 0
    assert len(after["groups"]) == 4


async def test_failures_filters_and_pages(running: Running, clock: ManualClock) -> None:
    client, state = running
    engine = state.engine
    now = clock.freeze()
    for i in range(5):
        ids = add_deliveries(
            engine, f"u{i}@x.io", state=State.DEAD, last_status_code=500 + i, reason=f"r{i}"
        )
        set_rows(engine, ids, updated_at=now - timedelta(hours=i))
    add_events(engine, "z@x.io", state=State.FAILED, last_status_code=400, reason="ct")

    first = await get(client, "/admin/failures", limit=2)
    assert [g["reason"] for g in first["groups"]] == ["ct", "r0"]
    second = await get(client, "/admin/failures", limit=2, offset=first["next_offset"])
    third = await get(client, "/admin/failures", limit=2, offset=second["next_offset"])
    assert [g["reason"] for g in second["groups"] + third["groups"]] == ["r1", "r2", "r3", "r4"]
    assert third["next_offset"] is None

    recent = await get(
        client, "/admin/failures", updated_after=(now - timedelta(minutes=90)).isoformat()
    )
    assert [g["reason"] for g in recent["groups"]] == ["ct", "r0", "r1"]
    # The replay body keeps the time range, so it replays what the screen showed.
    assert recent["groups"][2]["replay"]["updated_after"] is not None
    only_mm = await get(client, "/admin/failures", upstream="clevertap")
    assert [g["reason"] for g in only_mm["groups"]] == ["ct"]
    only_failed = await get(client, "/admin/failures", state="failed")
    assert [g["reason"] for g in only_failed["groups"]] == ["ct"]
    assert only_failed["groups"][0]["replay"]["states"] == ["failed"]


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"offset": -1}, "offset"),
        ({"offset": 2**63}, "offset"),
        ({"state": "gone"}, "state"),
        ({"updated_after": "yesterday"}, "updated_after"),
    ],
)
async def test_failures_refuse_bad_parameters(
    client: httpx.AsyncClient, params: dict[str, Any], where: str
) -> None:
    resp = await client.get("/admin/failures", params=params, headers=AUTH)
    assert resp.status_code == 422
    assert resp.json()["error"] == "invalid request"
    assert where in str(resp.json()["detail"])


async def test_status_code_filter_refuses_negative(client: httpx.AsyncClient) -> None:
    resp = await client.get("/admin/deliveries", params={"status_code": -1}, headers=AUTH)
    assert resp.status_code == 422
    # Beyond any HTTP status (and beyond 64 bits: SQLite cannot bind it) is refused too.
    for code in (1000, 2**64):
        resp = await client.get("/admin/deliveries", params={"status_code": code}, headers=AUTH)
        assert resp.status_code == 422, code
    resp = await client.post(
        "/admin/replay", json={"states": ["dead"], "status_code": -5}, headers=AUTH
    )
    assert resp.status_code == 422


# --- a person ----------------------------------------------------------------------------------


async def test_person_identity_deliveries_both_ways_and_rejected_calls(running: Running) -> None:
    client, state = running
    engine = state.engine
    sent = add_deliveries(engine, "ann@example.com", state=State.DEAD, reason="unavailable")
    event = add_events(engine, "ann@example.com", state=State.DELIVERED, clevertap_id="__ann")
    add_parked(engine, "ann@example.com")
    add_deliveries(engine, "bob@example.com")
    add_identity(engine, "ann@example.com", "__ann")
    named = add_call(
        engine, status=CallStatus.REJECTED, http_status=422, reason="no campaign",
        body='{"profiles": [{"Email": "Ann@Example.com"}]}',
    )  # fmt: skip
    add_call(engine, status=CallStatus.REJECTED, http_status=422, body='{"Email": "bob@x.io"}')
    # LIKE wildcards in the email are taken literally.
    add_call(engine, status=CallStatus.REJECTED, http_status=400, body='{"e": "annXexample.com"}')
    add_call(engine, source=Source.CLEVERTAP, body='{"Email": "ann@example.com"}')  # accepted

    body = await get(client, "/admin/person", email="  ANN@example.com ")
    assert body["email"] == "ann@example.com"
    assert body["identity"]["clevertap_id"] == "__ann"
    assert body["identity"]["source"] == "clevertap.campaign"
    assert body["counts"] == {
        "clevertap_to_mailmodo": {"dead": 1},
        "mailmodo_to_clevertap": {"delivered": 1, "parked": 1},
        "clevertap_to_mailmojo": {},
    }
    ids = [i["id"] for i in body["deliveries"]["items"]]
    assert ids[1:] == [event[0], sent[0]]
    assert body["deliveries"]["next_cursor"] is None
    assert [r["id"] for r in body["rejected"]["items"]] == [named]
    assert body["rejected"]["searched"] == 3

    odd = await get(client, "/admin/person", email="a_n%@example.com")
    assert odd["rejected"]["items"] == []
    nobody = await get(client, "/admin/person", email="nobody@example.com")
    assert nobody["identity"] is None
    assert nobody["deliveries"]["items"] == []
    assert nobody["counts"] == {
        "clevertap_to_mailmodo": {},
        "mailmodo_to_clevertap": {},
        "clevertap_to_mailmojo": {},
    }


async def test_person_pages_on_and_needs_an_email(running: Running) -> None:
    client, state = running
    add_deliveries(state.engine, *(["many@example.com"] * 21))
    body = await get(client, "/admin/person", email="many@example.com")
    assert len(body["deliveries"]["items"]) == 20
    rest = await get(
        client, "/admin/deliveries", email="many@example.com",
        cursor=body["deliveries"]["next_cursor"],
    )  # fmt: skip
    assert len(rest["items"]) == 1
    too_long = "x" * 50_000 + "@example.com"  # past SQLite's LIKE limit: was a 500
    for params in (
        {},
        {"email": ""},
        {"email": "   "},
        {"email": "a\x00b@example.com"},
        {"email": too_long},
        {"email": "x" * 250 + "@e.io"},  # longer than any stored email (254)
    ):
        resp = await client.get("/admin/person", params=params, headers=AUTH)
        assert resp.status_code == 422, params
        assert resp.json()["error"] == "invalid request"
        email = params.get("email", "").strip()
        if not email:
            continue
        for resp in (
            await client.get("/admin/deliveries", params=params, headers=AUTH),
            await client.get(f"/admin/consent/{quote(email, safe='@')}", headers=AUTH),
        ):
            assert resp.status_code == 422, (resp.url, params)
            assert resp.json()["error"] == "invalid request"


# --- the request sent upstream -----------------------------------------------------------------


async def test_detail_shows_the_request_sent_upstream(running: Running) -> None:
    client, state = running
    engine = state.engine
    trigger = add_delivery(engine, "a@x.io", target="spring sale/2", data={"name": "<b>"})
    journey = add_delivery(engine, "a@x.io", operation=Operation.JOURNEY_START, target="..")
    plan = {
        "email": "a@x.io",
        "listName": "list-1",
        "candidates": {"first_name": "Ann"},
        "always": {"clevertap_id": "__a"},
    }
    sync = add_delivery(engine, "a@x.io", operation=Operation.LIST_SYNC, payload=plan)
    keyed = add_events(engine, "a@x.io", clevertap_id="__a")[0]
    by_email = add_events(engine, "b@x.io")[0]
    unreadable = add_delivery(engine, "a@x.io", payload="not json")
    mojo = add_delivery(
        engine, "a@x.io", operation=Operation.MAILMOJO_SYNC, target="list 7",
        payload={"email": "a@x.io", "list_id": "list 7"}, upstream="mailmojo",
        direction="clevertap_to_mailmojo",
    )  # fmt: skip

    async def request_of(delivery_id: int) -> Any:
        return (await get(client, f"/admin/deliveries/{delivery_id}"))["upstream_request"]

    req = await request_of(trigger)
    assert (req["upstream"], req["method"]) == ("mailmodo", "POST")
    assert req["path"] == "/api/v1/triggerCampaign/spring%20sale%2F2"
    assert req["body"] == {"email": "a@x.io", "data": {"name": "<b>"}}
    assert "mmApiKey" in req["note"]
    assert (await request_of(journey))["path"] == "/hooks/start/%2E%2E"
    req = await request_of(sync)
    assert req["path"] == "/api/v1/addToList"
    assert req["body"] == {
        "email": "a@x.io",
        "listName": "list-1",
        "data": {"first_name": "Ann", "clevertap_id": "__a"},
    }
    assert "blank" in req["note"]
    req = await request_of(keyed)
    assert (req["upstream"], req["path"]) == ("clevertap", "/1/upload")
    [record] = req["body"]["d"]
    assert record["objectId"] == "__a"
    assert record["evtName"] == "MM Email Opened"
    [record] = (await request_of(by_email))["body"]["d"]
    assert record["identity"] == "b@x.io"
    assert "objectId" not in record
    assert await request_of(unreadable) is None
    req = await request_of(mojo)
    assert (req["upstream"], req["path"]) == ("mailmojo", "/v1/lists/list%207/subscribers/")
    assert req["body"] == {"email": "a@x.io", "list_id": "list 7"}
    detail = await get(client, f"/admin/deliveries/{unreadable}")
    assert detail["delivery"]["payload"] == "not json"
    # Every operation has its request shown, the consent and status ones included.
    for operation in (Operation.CONSENT_PROFILE, Operation.CONSENT_SUBSCRIBE):
        row = add_delivery(
            engine, "a@x.io", operation=operation, clevertap_id="__a", upstream="clevertap",
            direction="mailmodo_to_clevertap",
            payload=consent_payload(operation.value, "a@x.io", state="unsubscribed", source="x"),
        )  # fmt: skip
        req = await request_of(row)
        assert (req["upstream"], req["method"]) == ("clevertap", "POST")
        assert req["path"] == endpoint_of(operation.value)
        assert len(req["body"]["d"]) == 1
    read = add_delivery(engine, "a+b@x.io", operation=Operation.CONTACT_STATUS, payload={})
    req = await request_of(read)
    assert (req["method"], req["path"]) == ("GET", "/api/v1/getContactDetails?email=a%2Bb%40x.io")
    unsub = add_delivery(engine, "a@x.io", operation=Operation.CONTACT_UNSUBSCRIBE, payload={})
    assert (await request_of(unsub))["path"] == "/api/v1/contacts/unsubscribe"
    # No credential of the running bridge appears in what is shown.
    text = orjson.dumps(await get(client, f"/admin/deliveries/{trigger}")).decode()
    assert state.settings.mailmodo_api_key not in text
