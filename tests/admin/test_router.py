"""``/admin`` over the real app: auth, filters, pagination, one delivery in full, retry, cancel,
bulk replay, purge, rejected calls, stats and resuming a paused upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import respx
import structlog
from asgi_lifespan import LifespanManager
from sqlalchemy import func, select

from app.clock import utcnow
from app.db import create_db_engine
from app.main import create_app
from app.outbox.models import Attempt, Delivery, InboundCall, State
from app.state import BridgeState
from app.system import repository as system_repo
from app.system.migrations import upgrade
from app.worker.build import build_mailmodo_deliverer
from tests.admin.conftest import (
    AUTH,
    DONE,
    age_rows,
    post_activity,
    post_campaign,
    row_of,
)
from tests.conftest import ADMIN_TOKEN, CT_AUTH, make_settings, profiles_body
from tests.factories import (
    add_attempt,
    set_rows,
)

ROUTES = [
    ("GET", "/admin/deliveries"),
    ("GET", "/admin/deliveries/1"),
    ("POST", "/admin/deliveries/1/retry"),
    ("POST", "/admin/deliveries/1/cancel"),
    ("POST", "/admin/replay"),
    ("POST", "/admin/purge"),
    ("GET", "/admin/rejected"),
    ("GET", "/admin/stats"),
    ("POST", "/admin/upstreams/mailmodo/resume"),
]


async def get_json(client: httpx.AsyncClient, path: str, **params: Any) -> Any:
    resp = await client.get(path, params=params, headers=AUTH)
    assert resp.status_code == 200, resp.text
    return resp.json()


async def post_json(
    client: httpx.AsyncClient, path: str, body: Any = None, expect: int = 200, **params: Any
) -> Any:
    resp = await client.post(path, json=body, params=params, headers=AUTH)
    assert resp.status_code == expect, resp.text
    return resp.json()


def count(state: BridgeState, model: Any) -> int:
    with state.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


# --- auth --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
        {"Authorization": ADMIN_TOKEN},
        {"Authorization": "Bearer "},
        CT_AUTH,
    ],
    ids=["missing", "wrong", "basic-scheme", "no-scheme", "empty", "webhook-secret"],
)
async def test_every_route_refuses_without_the_token(
    client: httpx.AsyncClient, method: str, path: str, headers: dict[str, str]
) -> None:
    resp = await client.request(method, path, headers=headers, json={"states": ["dead"]})
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"].startswith("Bearer")
    body = resp.json()
    assert body["error"] == "unauthorized"
    assert "Bearer" in body["detail"]


async def test_auth_comes_before_body_parsing(client: httpx.AsyncClient) -> None:
    resp = await client.post(
        "/admin/replay", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 401


async def test_bearer_scheme_is_case_insensitive(client: httpx.AsyncClient) -> None:
    resp = await client.get("/admin/stats", headers={"Authorization": f"bearer {ADMIN_TOKEN}"})
    assert resp.status_code == 200


async def test_openapi_describes_the_admin_api(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    paths = {p for p in schema["paths"] if p.startswith("/admin")}
    assert paths == {
        "/admin/deliveries",
        "/admin/deliveries/{delivery_id}",
        "/admin/deliveries/{delivery_id}/retry",
        "/admin/deliveries/{delivery_id}/cancel",
        "/admin/replay",
        "/admin/purge",
        "/admin/rejected",
        "/admin/stats",
        "/admin/upstreams/{upstream}/resume",
        "/admin/overview",
        "/admin/failures",
        "/admin/person",
        "/admin/consent/{email}",
    }
    listing = schema["paths"]["/admin/deliveries"]["get"]
    assert listing["security"] == [{"HTTPBearer": []}]
    ok = listing["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["$ref"].endswith("/DeliveryPage")
    assert "DeliveryDetail" in schema["components"]["schemas"]
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


# --- listing -----------------------------------------------------------------------------------


async def test_a_mailmojo_list_id_with_leading_zeros_finds_its_rows(
    client: httpx.AsyncClient,
) -> None:
    """The bridge stores Mailmojo list "042" as 42 (Mailmojo's own spelling): the operator may
    type either. Other targets match as typed ("042" is not "42" for a Mailmodo campaign)."""
    resp = await client.post(
        "/clevertap/mailmojo/lists/042/contacts", json=profiles_body("a@x.io"), headers=CT_AUTH
    )
    assert resp.status_code == 200, resp.text
    mojo = resp.json()["ids"]
    campaign = await post_campaign(client, "42", "b@x.io")

    async def ids(target: str) -> list[int]:
        page = await get_json(client, "/admin/deliveries", target=target)
        return [item["id"] for item in page["items"]]

    assert await ids("042") == mojo
    assert await ids("42") == campaign + mojo
    assert await ids("0042") == mojo


async def test_list_filters(client: httpx.AsyncClient, state: BridgeState) -> None:
    ann = await post_campaign(client, "camp-1", "Ann@Example.com", "bob@example.com")
    other = await post_campaign(client, "camp-2", "ann@example.com")
    parked = await post_activity(client, "zed@example.com")
    set_rows(state.engine, [ann[1]], state=State.FAILED.value, reason="refused")

    async def ids(**params: Any) -> list[int]:
        page = await get_json(client, "/admin/deliveries", **params)
        return [item["id"] for item in page["items"]]

    everything = [*ann, *other, *parked]
    assert await ids() == sorted(everything, reverse=True)
    assert await ids(email="ANN@example.com") == [other[0], ann[0]]
    assert await ids(target="camp-1") == [ann[1], ann[0]]
    assert await ids(state="failed") == [ann[1]]
    assert await ids(state=["failed", "parked"]) == [parked[0], ann[1]]
    assert await ids(upstream="clevertap") == parked
    assert await ids(direction="mailmodo_to_clevertap") == parked
    assert await ids(operation="campaign.trigger", email="bob@example.com") == [ann[1]]
    assert await ids(target="camp-1", state="pending") == [ann[0]]
    future = (utcnow() + timedelta(minutes=5)).isoformat()
    past = (utcnow() - timedelta(minutes=5)).isoformat()
    assert await ids(created_after=future) == []
    assert await ids(created_before=future, created_after=past) == sorted(everything, reverse=True)
    assert await ids(updated_after=future) == []
    item = (await get_json(client, "/admin/deliveries", state="failed"))["items"][0]
    assert item["email"] == "bob@example.com"
    assert item["reason"] == "refused"
    assert "payload" not in item


async def test_naive_times_are_utc(client: httpx.AsyncClient) -> None:
    await post_campaign(client, "c", "ann@example.com")
    naive_future = (utcnow() + timedelta(minutes=5)).replace(tzinfo=None).isoformat()
    page = await get_json(client, "/admin/deliveries", created_before=naive_future)
    assert len(page["items"]) == 1
    page = await get_json(client, "/admin/deliveries", created_after=naive_future)
    assert page["items"] == []


@pytest.mark.parametrize(
    "params",
    [
        {"state": "exploded"},
        {"state": ["failed", "sent"]},
        {"direction": "sideways"},
        {"upstream": "sendgrid"},
        {"operation": "campaign.send"},
        {"created_after": "yesterday"},
        {"created_before": "2026-13-45"},
        {"updated_after": "soon"},
        {"cursor": "not-a-cursor"},
        {"cursor": "aWQ6eA"},  # "id:x"
        {"limit": 0},
        {"limit": 501},
        {"limit": "ten"},
    ],
)
async def test_bad_filters_are_422(client: httpx.AsyncClient, params: dict[str, Any]) -> None:
    resp = await client.get("/admin/deliveries", params=params, headers=AUTH)
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert body["error"] == "invalid request"
    assert body["detail"]


async def test_cursor_walks_every_row_exactly_once(client: httpx.AsyncClient) -> None:
    created: list[int] = []
    for i in range(4):
        created += await post_campaign(client, f"c{i}", f"a{i}@example.com", f"b{i}@example.com")
    seen: list[int] = []
    pages = 0
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = await get_json(client, "/admin/deliveries", **params)
        pages += 1
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(created, reverse=True)
    assert pages == 3
    # The cursor composes with filters.
    first = await get_json(client, "/admin/deliveries", limit=1, target="c2")
    rest = await get_json(
        client, "/admin/deliveries", limit=5, target="c2", cursor=first["next_cursor"]
    )
    assert len(first["items"]) + len(rest["items"]) == 2
    assert rest["next_cursor"] is None


async def test_exact_page_has_no_next_cursor(client: httpx.AsyncClient) -> None:
    await post_campaign(client, "c", "a@example.com", "b@example.com")
    page = await get_json(client, "/admin/deliveries", limit=2)
    assert len(page["items"]) == 2
    assert page["next_cursor"] is None


# --- one delivery ------------------------------------------------------------------------------


async def test_detail_with_real_attempts(
    client: httpx.AsyncClient, state: BridgeState, mailmodo: respx.MockRouter
) -> None:
    [ok, refused] = await post_campaign(client, "camp-9", "ann@example.com", "bob@example.com")
    mailmodo.post("/api/v1/triggerCampaign/camp-9").mock(
        side_effect=[
            httpx.Response(200, json={"success": True, "ref": "ref-1"}),
            httpx.Response(400, json={"success": False, "message": "bad data"}),
        ]
    )
    deliverer = build_mailmodo_deliverer(state.engine, state.settings, "test-worker")
    assert deliverer is not None
    try:
        await deliverer.run_once(1)
        await deliverer.run_once(1)
    finally:
        await deliverer.client.aclose()

    detail = await get_json(client, f"/admin/deliveries/{refused}")
    assert detail["delivery"]["id"] == refused
    assert detail["delivery"]["state"] == "failed"
    assert detail["delivery"]["payload"]["email"] == "bob@example.com"
    assert "bad data" in detail["reason"]
    call = detail["inbound_call"]
    assert call["route"] == "clevertap.campaign"
    assert call["target"] == "camp-9"
    assert call["status"] == "accepted"
    assert "bob@example.com" in call["body"]
    assert call["received_at"]
    [attempt] = detail["attempts"]
    assert attempt["number"] == 1
    assert attempt["status_code"] == 400
    assert attempt["outcome"] == "failed"
    assert attempt["duration_ms"] >= 0
    assert "bad data" in attempt["response_body"]
    assert "bad data" in attempt["error"]
    assert attempt["started_at"]

    delivered = await get_json(client, f"/admin/deliveries/{ok}")
    assert delivered["delivery"]["state"] == "delivered"
    assert delivered["delivery"]["upstream_ref"] == "ref-1"
    assert delivered["reason"] is None
    assert delivered["attempts"][0]["outcome"] == "delivered"


async def test_detail_missing_is_404(client: httpx.AsyncClient) -> None:
    resp = await client.get("/admin/deliveries/999", headers=AUTH)
    assert resp.status_code == 404
    assert resp.json() == {"error": "not found", "detail": "there is no delivery 999"}
    resp = await client.get("/admin/deliveries/abc", headers=AUTH)
    assert resp.status_code == 422


# --- retry and cancel --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "from_state", ["failed", "dead", "cancelled", "dropped", "parked", "pending"]
)
async def test_retry_makes_it_due_now_on_a_fresh_schedule(
    client: httpx.AsyncClient, state: BridgeState, from_state: str
) -> None:
    [d] = await post_campaign(client, "c", "ann@example.com")
    later = utcnow() + timedelta(hours=5)
    set_rows(
        state.engine,
        [d],
        state=from_state,
        attempts=4,
        deferrals=2,
        next_attempt_at=later,
        reason="gave up",
        finished_at=utcnow(),
    )
    answer = await post_json(client, f"/admin/deliveries/{d}/retry")
    assert answer == {
        "id": d,
        "previous_state": from_state,
        "state": "pending",
        "reason": "replayed by operator",
    }
    row = row_of(state.engine, d)
    assert row.state == "pending"
    assert row.attempts == 0
    assert row.deferrals == 0
    assert row.next_attempt_at <= utcnow()
    assert row.lease_token is None
    assert row.finished_at is None
    assert row.reason == "replayed by operator"


async def test_retry_clears_a_stale_lease(client: httpx.AsyncClient, state: BridgeState) -> None:
    [d] = await post_campaign(client, "c", "ann@example.com")
    set_rows(
        state.engine,
        [d],
        state="failed",
        lease_token="old",
        leased_by="dead-worker",
        next_attempt_at=utcnow() - timedelta(minutes=1),
    )
    await post_json(client, f"/admin/deliveries/{d}/retry")
    row = row_of(state.engine, d)
    assert (row.lease_token, row.leased_by) == (None, None)


async def test_retry_delivered_needs_force(client: httpx.AsyncClient, state: BridgeState) -> None:
    [d] = await post_campaign(client, "c", "ann@example.com")
    set_rows(state.engine, [d], state="delivered", attempts=1, finished_at=utcnow())
    resp = await client.post(f"/admin/deliveries/{d}/retry", headers=AUTH)
    assert resp.status_code == 409
    assert resp.json()["error"] == "already delivered"
    assert "force" in resp.json()["detail"]
    assert row_of(state.engine, d).state == "delivered"
    answer = await post_json(client, f"/admin/deliveries/{d}/retry", force="true")
    assert answer["previous_state"] == "delivered"
    assert row_of(state.engine, d).state == "pending"


async def test_retry_and_cancel_refuse_an_item_in_flight(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    [d] = await post_campaign(client, "c", "ann@example.com")
    set_rows(
        state.engine,
        [d],
        lease_token="live",
        leased_by="w1",
        next_attempt_at=utcnow() + timedelta(minutes=5),
    )
    for action in ("retry", "cancel"):
        resp = await client.post(f"/admin/deliveries/{d}/{action}", headers=AUTH)
        assert resp.status_code == 409
        assert resp.json()["error"] == "in flight"
    assert row_of(state.engine, d).lease_token == "live"


async def test_retry_and_cancel_missing_are_404(client: httpx.AsyncClient) -> None:
    for action in ("retry", "cancel"):
        resp = await client.post(f"/admin/deliveries/77/{action}", headers=AUTH)
        assert resp.status_code == 404


@pytest.mark.parametrize("from_state", ["pending", "parked"])
async def test_cancel(client: httpx.AsyncClient, state: BridgeState, from_state: str) -> None:
    [d] = await post_campaign(client, "c", "ann@example.com")
    set_rows(state.engine, [d], state=from_state)
    answer = await post_json(client, f"/admin/deliveries/{d}/cancel")
    assert answer["previous_state"] == from_state
    assert answer["state"] == "cancelled"
    row = row_of(state.engine, d)
    assert row.state == "cancelled"
    assert row.reason == "cancelled by operator"
    assert row.finished_at is not None


@pytest.mark.parametrize("from_state", ["delivered", "failed", "dead", "dropped", "cancelled"])
async def test_cancel_finished_is_409(
    client: httpx.AsyncClient, state: BridgeState, from_state: str
) -> None:
    [d] = await post_campaign(client, "c", "ann@example.com")
    set_rows(state.engine, [d], state=from_state)
    resp = await client.post(f"/admin/deliveries/{d}/cancel", headers=AUTH)
    assert resp.status_code == 409
    assert resp.json()["error"] == "cannot cancel"
    assert row_of(state.engine, d).state == from_state


async def test_cancelled_items_are_not_claimed(
    client: httpx.AsyncClient, state: BridgeState, mailmodo: respx.MockRouter
) -> None:
    [d] = await post_campaign(client, "c", "ann@example.com")
    await post_json(client, f"/admin/deliveries/{d}/cancel")
    route = mailmodo.post("/api/v1/triggerCampaign/c").respond(200, json={"success": True})
    deliverer = build_mailmodo_deliverer(state.engine, state.settings, "w")
    assert deliverer is not None
    try:
        stats = await deliverer.run_once(10)
    finally:
        await deliverer.client.aclose()
    assert stats.claimed == 0
    assert not route.called


# --- replay ------------------------------------------------------------------------------------


async def test_replay_dry_run_then_real(client: httpx.AsyncClient, state: BridgeState) -> None:
    ids = await post_campaign(client, "c", *(f"u{i}@example.com" for i in range(6)))
    set_rows(state.engine, ids[:2], state="dead", attempts=4, finished_at=utcnow())
    set_rows(state.engine, ids[2:3], state="failed", attempts=1, finished_at=utcnow())
    set_rows(state.engine, ids[3:4], state="delivered", finished_at=utcnow())
    set_rows(state.engine, ids[4:5], state="cancelled", finished_at=utcnow())

    dry = await post_json(client, "/admin/replay", {"states": ["failed", "dead"], "dry_run": True})
    assert dry == {"matched": 3, "replayed": 0, "dry_run": True, **DONE}
    assert row_of(state.engine, ids[0]).state == "dead"

    real = await post_json(client, "/admin/replay", {"states": ["failed", "dead"]})
    assert real == {"matched": 3, "replayed": 3, "dry_run": False, **DONE}
    for d in ids[:3]:
        row = row_of(state.engine, d)
        assert (row.state, row.attempts, row.reason) == ("pending", 0, "replayed by operator")
        assert row.finished_at is None
    assert row_of(state.engine, ids[3]).state == "delivered"
    assert row_of(state.engine, ids[4]).state == "cancelled"
    again = await post_json(client, "/admin/replay", {"states": ["failed", "dead"]})
    assert again == {"matched": 0, "replayed": 0, "dry_run": False, **DONE}


async def test_a_replay_that_outlasts_max_seconds_answers_with_a_cursor_to_go_on(
    client: httpx.AsyncClient, state: BridgeState, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 100,000-row replay on a busy PostgreSQL once gave no answer within a client's 60 s.
    import app.admin.actions

    monkeypatch.setattr(app.admin.actions, "BATCH_SIZE", 2)
    ids = await post_campaign(client, "c", *(f"u{i}@example.com" for i in range(5)))
    set_rows(state.engine, ids, state="dead", attempts=3, finished_at=utcnow())
    body: dict[str, Any] = {"states": ["dead"], "max_seconds": 1e-9}
    parts = []
    while True:
        part = await post_json(client, "/admin/replay", body)
        parts.append(part)
        if part["complete"]:
            break
        body["cursor"] = part["next_cursor"]
    # One batch per call (the time is up after each), never cut inside a batch; the last,
    # short batch ends it.
    assert [(p["matched"], p["replayed"], p["next_cursor"]) for p in parts] == [
        (2, 2, f"r{ids[1]}"),
        (2, 2, f"r{ids[3]}"),
        (1, 1, None),
    ]
    assert {row_of(state.engine, d).state for d in ids} == {"pending"}
    # The default budget (20 s) covers a small replay in one answer.
    set_rows(state.engine, ids, state="dead", finished_at=utcnow())
    whole = await post_json(client, "/admin/replay", {"states": ["dead"]})
    assert whole == {"matched": 5, "replayed": 5, "dry_run": False, **DONE}


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"cursor": "x"}, "cursor"),
        ({"cursor": "d12"}, "cursor"),  # a purge's cursor
        ({"cursor": "r99999999999999999999"}, "cursor"),
        ({"cursor": "r\u0661\u0662"}, "cursor"),  # digits, but not ASCII ones
        ({"cursor": "x", "dry_run": True}, "cursor"),  # refused in a dry run too
        ({"max_seconds": 0}, "max_seconds"),
        ({"max_seconds": 601}, "max_seconds"),
    ],
)
async def test_replay_refuses_a_cursor_it_never_gave_and_budgets_out_of_range(
    client: httpx.AsyncClient, extra: dict[str, Any], field: str
) -> None:
    resp = await client.post("/admin/replay", json={"states": ["dead"], **extra}, headers=AUTH)
    assert resp.status_code == 422
    assert field in resp.text


async def test_replay_default_states_with_a_time_range(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    ids = await post_campaign(client, "c", "a@example.com", "b@example.com", "c@example.com")
    set_rows(state.engine, [ids[0]], state="dead")
    set_rows(state.engine, [ids[1]], state="failed", updated_at=utcnow() - timedelta(hours=3))
    since = (utcnow() - timedelta(hours=2)).isoformat()
    answer = await post_json(client, "/admin/replay", {"updated_after": since})
    # Only the dead one died within two hours; the pending one is not a default state.
    assert answer == {"matched": 1, "replayed": 1, "dry_run": False, **DONE}
    assert [row_of(state.engine, d).state for d in ids] == ["pending", "failed", "pending"]


async def test_replay_by_email_and_target(client: httpx.AsyncClient, state: BridgeState) -> None:
    a = await post_campaign(client, "c1", "ann@example.com", "bob@example.com")
    b = await post_campaign(client, "c2", "ann@example.com")
    set_rows(state.engine, [*a, *b], state="dead")
    answer = await post_json(
        client, "/admin/replay", {"states": ["dead"], "email": "ANN@example.com", "target": "c1"}
    )
    assert answer["replayed"] == 1
    assert [row_of(state.engine, d).state for d in [*a, *b]] == ["pending", "dead", "dead"]


async def test_replay_skips_items_in_flight(client: httpx.AsyncClient, state: BridgeState) -> None:
    ids = await post_campaign(client, "c", "a@example.com", "b@example.com")
    set_rows(
        state.engine,
        [ids[0]],
        lease_token="live",
        next_attempt_at=utcnow() + timedelta(minutes=5),
    )
    answer = await post_json(client, "/admin/replay", {"states": ["pending"]})
    assert answer == {"matched": 2, "replayed": 1, "dry_run": False, **DONE}
    assert row_of(state.engine, ids[0]).lease_token == "live"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({}, "states"),
        ({"dry_run": True}, "states"),
        ({"email": "ann@example.com"}, "states"),
        ({"states": []}, "states"),
        ({"states": ["delivered"]}, "delivered"),
        ({"states": ["nonsense"]}, "states"),
        ({"state": ["dead"]}, "state"),
        ({"states": ["dead"], "updated_after": "last tuesday"}, "updated_after"),
        ({"states": ["dead"], "upstream": "sendgrid"}, "upstream"),
    ],
)
async def test_replay_refusals(
    client: httpx.AsyncClient, state: BridgeState, body: dict[str, Any], needle: str
) -> None:
    [d] = await post_campaign(client, "c", "a@example.com")
    set_rows(state.engine, [d], state="dead")
    resp = await client.post("/admin/replay", json=body, headers=AUTH)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"] == "invalid request"
    assert needle in str(resp.json()["detail"])
    assert row_of(state.engine, d).state == "dead"


async def test_replay_needs_a_json_body(client: httpx.AsyncClient) -> None:
    resp = await client.post(
        "/admin/replay",
        content=b"{oops",
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert resp.status_code == 422
    assert resp.json()["error"] == "invalid request"


# --- purge -------------------------------------------------------------------------------------


async def test_purge_by_age(client: httpx.AsyncClient, state: BridgeState) -> None:
    old = await post_campaign(client, "old", "a@example.com", "b@example.com", "c@example.com")
    mixed = await post_campaign(client, "mixed", "d@example.com", "e@example.com")
    recent = await post_campaign(client, "new", "f@example.com")
    age_rows(state.engine, [*old, *mixed], days=40)
    set_rows(state.engine, old[:2], state="delivered", updated_at=utcnow() - timedelta(days=40))
    set_rows(state.engine, old[2:], state="dead", updated_at=utcnow() - timedelta(days=35))
    set_rows(state.engine, mixed[:1], state="failed", updated_at=utcnow() - timedelta(days=40))
    # mixed[1] stays pending: its call must stay too.
    set_rows(state.engine, recent, state="delivered")
    add_attempt(state.engine, old[0])
    add_attempt(state.engine, old[2], number=1)
    add_attempt(state.engine, old[2], number=2)
    add_attempt(state.engine, recent[0])
    calls_before = count(state, InboundCall)

    dry = await post_json(client, "/admin/purge", {"older_than": "30d", "dry_run": True})
    assert dry["dry_run"] is True
    assert (dry["matched"], dry["deleted"], dry["calls_deleted"]) == (4, 0, 1)
    assert count(state, Delivery) == 6

    real = await post_json(client, "/admin/purge", {"older_than": "30d"})
    assert (real["matched"], real["deleted"], real["calls_deleted"]) == (4, 4, 1)
    with state.engine.connect() as conn:
        left = set(conn.execute(select(Delivery.id)).scalars())
        attempts_left = set(conn.execute(select(Attempt.delivery_id)).scalars())
    assert left == {mixed[1], *recent}
    assert attempts_left == {recent[0]}
    assert count(state, InboundCall) == calls_before - 1

    again = await post_json(client, "/admin/purge", {"older_than": "30d"})
    assert (again["matched"], again["deleted"], again["calls_deleted"]) == (0, 0, 0)


async def test_purge_in_batches(
    client: httpx.AsyncClient, state: BridgeState, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.admin.actions

    monkeypatch.setattr(app.admin.actions, "BATCH_SIZE", 2)
    ids = await post_campaign(client, "c", *(f"u{i}@example.com" for i in range(5)))
    age_rows(state.engine, ids, days=2)
    set_rows(state.engine, ids, state="dead", updated_at=utcnow() - timedelta(days=2))
    answer = await post_json(client, "/admin/purge", {"older_than": "1d"})
    assert (answer["deleted"], answer["calls_deleted"]) == (5, 1)
    assert count(state, Delivery) == 0


async def test_a_purge_that_outlasts_max_seconds_goes_on_from_its_cursor(
    client: httpx.AsyncClient, state: BridgeState, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.admin.actions

    monkeypatch.setattr(app.admin.actions, "BATCH_SIZE", 2)
    for _ in range(3):  # rejected calls: the second phase, calls without deliveries
        await client.post("/clevertap/campaigns/c", content=b"{bad", headers=CT_AUTH)
    ids = await post_campaign(client, "c", *(f"u{i}@example.com" for i in range(3)))
    set_rows(state.engine, ids, state="delivered", updated_at=utcnow() - timedelta(days=2))
    with state.engine.begin() as conn:
        conn.execute(
            InboundCall.__table__.update().values(received_at=utcnow() - timedelta(days=2))
        )
    body: dict[str, Any] = {"older_than": "1d", "max_seconds": 1e-9}
    cursors = []
    deleted = calls = 0
    while True:
        part = await post_json(client, "/admin/purge", body)
        deleted += part["deleted"]
        calls += part["calls_deleted"]
        if part["complete"]:
            assert part["next_cursor"] is None
            break
        cursors.append(part["next_cursor"])
        body["cursor"] = part["next_cursor"]
    # Deliveries first, two per batch, then the calls left alone, two per batch.
    assert cursors == [f"d{ids[1]}", f"d{ids[2]}", "c"]
    assert (deleted, calls) == (3, 4)
    assert count(state, Delivery) == 0
    assert count(state, InboundCall) == 0
    for cursor in ("r1", "d\u0661\u0662"):
        for dry_run in (False, True):
            bad = await client.post(
                "/admin/purge",
                json={"older_than": "1d", "cursor": cursor, "dry_run": dry_run},
                headers=AUTH,
            )
            assert bad.status_code == 422, (cursor, dry_run)


async def test_purge_deletes_old_rejected_and_duplicate_calls(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    await client.post("/clevertap/campaigns/c", content=b"{bad", headers=CT_AUTH)
    await post_campaign(client, "c", "a@example.com")
    await post_campaign(client, "c", "a@example.com")  # a duplicate: a call, no delivery
    with state.engine.begin() as conn:
        conn.execute(
            InboundCall.__table__.update()
            .where(InboundCall.status.in_(["rejected", "duplicate"]))
            .values(received_at=utcnow() - timedelta(hours=13))
        )
    assert count(state, InboundCall) == 3

    narrowed = await post_json(
        client, "/admin/purge", {"older_than": "12h", "upstream": "mailmodo"}
    )
    assert narrowed["calls_deleted"] == 0
    kept = await post_json(client, "/admin/purge", {"older_than": "12h", "include_calls": False})
    assert kept["calls_deleted"] == 0
    assert count(state, InboundCall) == 3

    dry = await post_json(client, "/admin/purge", {"older_than": "12h", "dry_run": True})
    assert dry["calls_deleted"] == 2
    real = await post_json(client, "/admin/purge", {"older_than": "12h"})
    assert (real["deleted"], real["calls_deleted"]) == (0, 2)
    with state.engine.connect() as conn:
        statuses = list(conn.execute(select(InboundCall.status)).scalars())
    assert statuses == ["accepted"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({}, "older_than"),
        ({"older_than": "soon"}, "duration"),
        ({"older_than": "30"}, "duration"),
        ({"older_than": "0d"}, "more than zero"),
        ({"older_than": "1d", "states": ["pending"]}, "cancel them"),
        ({"older_than": "1d", "states": []}, "states"),
        ({"older_than": "1d", "direction": "up"}, "direction"),
    ],
)
async def test_purge_refusals(
    client: httpx.AsyncClient, state: BridgeState, body: dict[str, Any], needle: str
) -> None:
    [d] = await post_campaign(client, "c", "a@example.com")
    age_rows(state.engine, [d], days=3)
    resp = await client.post("/admin/purge", json=body, headers=AUTH)
    assert resp.status_code == 422, resp.text
    assert needle in str(resp.json()["detail"])
    assert count(state, Delivery) == 1


@pytest.mark.parametrize(("text", "seconds"), [("90m", 5400), ("3600s", 3600), ("2w", 1209600)])
async def test_purge_duration_units(client: httpx.AsyncClient, text: str, seconds: int) -> None:
    answer = await post_json(client, "/admin/purge", {"older_than": text, "dry_run": True})
    cutoff = answer["cutoff"]
    age = (utcnow() - datetime.fromisoformat(cutoff)).total_seconds()
    assert seconds - 5 < age < seconds + 5


# --- rejected calls ----------------------------------------------------------------------------


async def test_rejected_listing(client: httpx.AsyncClient, state: BridgeState) -> None:
    await client.post("/clevertap/campaigns/camp-x", content=b"{bad json", headers=CT_AUTH)
    await client.post(
        "/clevertap/journeys/j-1/start",
        content=b"<xml/>",
        headers={**CT_AUTH, "Content-Type": "text/xml"},
    )
    await client.post("/mailmodo/wrong-secret/events", json={"event": "opened"})  # not kept
    await client.post(f"/mailmodo/{'mm-test-secret'}/events", json={"nothing": "here"})
    await post_campaign(client, "fine", "a@example.com")

    page = await get_json(client, "/admin/rejected")
    items = page["items"]
    assert [i["source"] for i in items] == ["mailmodo", "clevertap", "clevertap"]
    mm, xml, bad = items
    assert (bad["route"], bad["target"], bad["http_status"]) == (
        "clevertap.campaign",
        "camp-x",
        400,
    )
    assert bad["reason"].startswith("malformed JSON")
    assert bad["body"] == "{bad json"
    assert xml["http_status"] == 415
    assert xml["target"] == "j-1"
    assert mm["http_status"] == 422
    assert mm["received_at"]

    only_mm = await get_json(client, "/admin/rejected", source="mailmodo")
    assert [i["id"] for i in only_mm["items"]] == [mm["id"]]
    future = (utcnow() + timedelta(minutes=1)).isoformat()
    assert (await get_json(client, "/admin/rejected", received_after=future))["items"] == []
    assert len((await get_json(client, "/admin/rejected", received_before=future))["items"]) == 3

    first = await get_json(client, "/admin/rejected", limit=2)
    rest = await get_json(client, "/admin/rejected", limit=2, cursor=first["next_cursor"])
    assert [i["id"] for i in first["items"] + rest["items"]] == [i["id"] for i in items]
    assert rest["next_cursor"] is None

    for params in ({"source": "sendgrid"}, {"cursor": "!!"}, {"received_after": "x"}):
        resp = await client.get("/admin/rejected", params=params, headers=AUTH)
        assert resp.status_code == 422


async def test_rejected_bodies_are_cut(client: httpx.AsyncClient) -> None:
    await client.post("/clevertap/campaigns/c", content=b"[" + b"1," * 3000, headers=CT_AUTH)
    [item] = (await get_json(client, "/admin/rejected"))["items"]
    assert len(item["body"]) == 2000
    assert item["body_truncated"] is True


# --- stats and pauses --------------------------------------------------------------------------


async def test_stats(client: httpx.AsyncClient, state: BridgeState) -> None:
    ids = await post_campaign(client, "c", *(f"u{i}@example.com" for i in range(8)))
    await post_activity(client, "zed@example.com")
    await post_activity(client, "zed@example.com", event="clicked")
    await post_activity(client, "amy@example.com")
    now = utcnow()
    set_rows(state.engine, ids[:3], state="delivered", updated_at=now - timedelta(minutes=2))
    set_rows(state.engine, ids[3:5], state="delivered", updated_at=now - timedelta(minutes=30))
    set_rows(state.engine, ids[5:6], state="dead")
    set_rows(state.engine, ids[6:7], created_at=now - timedelta(minutes=10))
    with state.engine.begin() as conn:
        system_repo.set_paused(
            conn,
            "mailmodo",
            reason="Mailmodo rejected the credentials: HTTP 401",
            fingerprint="x",
            now=now - timedelta(minutes=3),
            probe_in=60,
        )
        system_repo.beat(conn, worker_id="w-1", hostname="h", pid=7, started_at=now, now=now)

    s = await get_json(client, "/admin/stats")
    assert s["counts"]["clevertap_to_mailmodo"] == {
        "pending": 2,
        "delivered": 5,
        "failed": 0,
        "dead": 1,
        "parked": 0,
        "dropped": 0,
        "cancelled": 0,
    }
    assert s["counts"]["mailmodo_to_clevertap"]["parked"] == 3
    assert s["totals"]["parked"] == 3
    assert s["totals"]["delivered"] == 5
    assert 590 < s["oldest_pending_age_seconds"] < 700
    assert s["deliveries_per_minute"] == {"last_5_minutes": 0.6, "last_60_minutes": 0.083}
    assert s["parked"] == {"count": 3, "distinct_emails": 2}
    mm = s["upstreams"]["mailmodo"]
    assert mm["paused"] is True
    assert "401" in mm["reason"]
    assert mm["since"]
    assert s["upstreams"]["clevertap"] == {
        "paused": False,
        "reason": None,
        "since": None,
        "next_probe_at": None,
    }
    [worker] = s["workers"]
    assert worker["worker_id"] == "w-1"
    assert worker["age_seconds"] < 60

    with structlog.testing.capture_logs() as logs:
        resumed = await post_json(client, "/admin/upstreams/mailmodo/resume")
        assert resumed["resumed"] is True
        s = await get_json(client, "/admin/stats")
        assert s["upstreams"]["mailmodo"]["paused"] is False
        again = await post_json(client, "/admin/upstreams/mailmodo/resume")
        assert again["resumed"] is False
    # The pause's end is in the log (once: the second resume found nothing paused).
    ends = [e for e in logs if e["event"].startswith("upstream resumed by an operator")]
    assert [e["upstream"] for e in ends] == ["mailmodo"]


async def test_stats_of_an_empty_database(client: httpx.AsyncClient) -> None:
    s = await get_json(client, "/admin/stats")
    assert s["oldest_pending_age_seconds"] is None
    assert s["totals"] == dict.fromkeys([st.value for st in State], 0)
    assert s["workers"] == []


async def test_resume_unknown_upstream_is_422(client: httpx.AsyncClient) -> None:
    resp = await client.post("/admin/upstreams/sendgrid/resume", headers=AUTH)
    assert resp.status_code == 422


# -- values out of range: 422 or 404, never a driver error ---------------------------------------


@pytest.fixture
async def any_db_client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The real app on SQLite or PostgreSQL (each driver fails differently on such values)."""
    settings = make_settings(database_url)
    engine = create_db_engine(settings)
    upgrade(settings, engine)
    engine.dispose()
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bridge.test") as c:
            yield c


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/deliveries/{id}"),
        ("POST", "/admin/deliveries/{id}/retry"),
        ("POST", "/admin/deliveries/{id}/cancel"),
    ],
)
@pytest.mark.parametrize("delivery_id", [2**63, 10**30, -(10**30), 0])
async def test_ids_past_64_bits_are_refused(
    any_db_client: httpx.AsyncClient, method: str, path: str, delivery_id: int
) -> None:
    resp = await any_db_client.request(method, path.format(id=delivery_id), headers=AUTH)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"] == "invalid request"


async def test_the_largest_id_is_simply_not_found(client: httpx.AsyncClient) -> None:
    resp = await client.post(f"/admin/deliveries/{2**63 - 1}/retry", headers=AUTH)
    assert resp.status_code == 404


@pytest.mark.parametrize(
    "query",
    [
        "created_after=9999-12-31T23:59:59-23:59",
        "updated_before=0001-01-01T00:00:00%2B23:59",
        "email=a%00b@example.com",
        "target=%00",
        "cursor=aWQ6OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5",  # id:99999999999999999999999999
    ],
)
async def test_query_values_out_of_range_are_422(
    any_db_client: httpx.AsyncClient, query: str
) -> None:
    resp = await any_db_client.get(f"/admin/deliveries?{query}", headers=AUTH)
    assert resp.status_code == 422, resp.text


@pytest.mark.parametrize(
    "path",
    [
        f"/admin/failures?offset={2**63}",
        f"/admin/failures?offset={2**64}",
        "/admin/consent/a%00b@example.com",
    ],
)
async def test_values_the_database_cannot_take_are_422(
    any_db_client: httpx.AsyncClient, path: str
) -> None:
    """Past 64 bits (SQLite cannot bind it, PostgreSQL's bigint overflows) and NUL in text
    (PostgreSQL refuses it): found by an attacker's probe as 500s."""
    resp = await any_db_client.get(path, headers=AUTH)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"] in ("invalid request", "validation failed")


async def test_the_largest_offset_is_an_empty_page(any_db_client: httpx.AsyncClient) -> None:
    resp = await any_db_client.get(f"/admin/failures?offset={2**63 - 1}", headers=AUTH)
    assert resp.status_code == 200, resp.text
    assert resp.json()["groups"] == []


async def test_a_rejected_filter_out_of_range_is_422(client: httpx.AsyncClient) -> None:
    resp = await client.get(
        "/admin/rejected?received_after=0001-01-01T00:00:00%2B23:59", headers=AUTH
    )
    assert resp.status_code == 422


@pytest.mark.parametrize(
    "body",
    [
        {"states": ["dead"], "created_after": "0001-01-01T00:00:00+23:59"},
        {"older_than": "99999999999999d"},
    ],
)
async def test_bodies_out_of_range_are_422(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    path = "/admin/purge" if "older_than" in body else "/admin/replay"
    resp = await client.post(path, json=body, headers=AUTH)
    assert resp.status_code == 422, resp.text


@pytest.mark.parametrize("path", ["/admin/replay", "/admin/purge"])
async def test_a_body_that_is_not_json_is_400_and_documented(
    client: httpx.AsyncClient, path: str
) -> None:
    resp = await client.post(
        path,
        content=b'{"states": ["dead\xff"]}',
        headers=AUTH | {"Content-Type": "application/json"},
    )
    assert resp.status_code == 400, resp.text
    spec = (await client.get("/openapi.json")).json()
    assert "400" in spec["paths"][path]["post"]["responses"]
