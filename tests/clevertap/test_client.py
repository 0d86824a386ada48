"""The CleverTap upload client on the wire, how the uploader is configured (or not), and what
readiness says about CleverTap."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

from app import __version__
from app.clevertap.client import CleverTapClient
from app.outbox.models import State
from app.state import BridgeState
from app.upstream import UpstreamTimeout, UpstreamUnreachable
from app.worker.build import build_clevertap_uploader
from tests.conftest import CLEVERTAP_URL, make_settings
from tests.factories import (
    all_deliveries,
    upstream_state,
)
from tests.worker.conftest_upload import (
    ACCOUNT_HEADERS,
    all_sent,
    ct_success,
    opened,
    post_mm,
    running_app,
    uploader_for,
    wait_until,
)

RECORDS: list[dict[str, Any]] = [
    {
        "objectId": "__g09c9bf3b0d374a259c86f5b855ec9b19",
        "type": "event",
        "ts": 1662695704,
        "evtName": "MM Email Opened",
        "evtData": {"Campaign Name": "Welcome"},
    },
    {
        "identity": "eve@example.com",
        "type": "event",
        "ts": 1662695705,
        "evtName": "MM Email Link Clicked",
        "evtData": {"Link URL": "https://example.com/x"},
    },
]


def ct_client(base_url: str = CLEVERTAP_URL, timeout: float = 5.0) -> CleverTapClient:
    return CleverTapClient(
        base_url=base_url, account_id="TEST-ACCOUNT", passcode="TEST-PASSCODE", timeout=timeout
    )


# --- the client ------------------------------------------------------------------------------


@pytest.mark.parametrize("base_url", [CLEVERTAP_URL, CLEVERTAP_URL + "/"])
async def test_upload_posts_the_records_under_d_with_the_account_headers(
    clevertap_api: respx.MockRouter, base_url: str
) -> None:
    body = {"status": "success", "processed": 2, "unprocessed": []}
    route = clevertap_api.post("/1/upload").mock(return_value=httpx.Response(200, json=body))
    client = ct_client(base_url)
    try:
        response = await client.upload(RECORDS)
    finally:
        await client.aclose()
    [call] = route.calls
    request = call.request
    assert request.method == "POST"
    assert str(request.url) == "https://clevertap.test/1/upload"
    assert {k: request.headers[k] for k in ACCOUNT_HEADERS} == ACCOUNT_HEADERS
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == f"ctmm-bridge/{__version__}"
    assert json.loads(request.content) == {"d": RECORDS}
    assert (response.status_code, response.json, response.retry_after) == (200, body, None)
    assert response.duration_ms >= 0


async def test_upload_returns_non_json_answers_as_text(clevertap_api: respx.MockRouter) -> None:
    clevertap_api.post("/1/upload").mock(
        return_value=httpx.Response(
            429, text="Too many concurrent requests", headers={"Retry-After": "7"}
        )
    )
    client = ct_client()
    try:
        response = await client.upload(RECORDS)
    finally:
        await client.aclose()
    assert (response.status_code, response.json, response.text, response.retry_after) == (
        429,
        None,
        "Too many concurrent requests",
        7.0,
    )


@pytest.mark.parametrize(
    ("error", "raised"),
    [
        (httpx.ReadTimeout("slow"), UpstreamTimeout),
        (httpx.ConnectTimeout("slow"), UpstreamTimeout),
        (httpx.ConnectError("refused"), UpstreamUnreachable),
        (httpx.RemoteProtocolError("broken"), UpstreamUnreachable),
    ],
)
async def test_transport_failures_become_upstream_errors(
    clevertap_api: respx.MockRouter, error: Exception, raised: type[Exception]
) -> None:
    clevertap_api.post("/1/upload").mock(side_effect=error)
    client = ct_client()
    try:
        with pytest.raises(raised):
            await client.upload(RECORDS)
    finally:
        await client.aclose()


async def test_the_client_never_retries_by_itself(clevertap_api: respx.MockRouter) -> None:
    route = clevertap_api.post("/1/upload").mock(return_value=httpx.Response(503))
    client = ct_client()
    try:
        assert (await client.upload(RECORDS)).status_code == 503
    finally:
        await client.aclose()
    assert route.call_count == 1


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "missing",
    [{"clevertap_account_id": None}, {"clevertap_passcode": None}, {"clevertap_passcode": ""}],
)
def test_no_uploader_without_account_and_passcode(
    sqlite_url: str, state: BridgeState, missing: dict[str, Any]
) -> None:
    settings = make_settings(sqlite_url, **missing)
    assert build_clevertap_uploader(state.engine, settings, "w") is None


@pytest.fixture
def eu1() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url="https://eu1.api.clevertap.com", assert_all_called=False) as router:
        yield router


async def test_without_an_api_url_the_region_host_is_used(
    client: httpx.AsyncClient, state: BridgeState, eu1: respx.MockRouter
) -> None:
    route = eu1.post("/1/upload").mock(side_effect=ct_success)
    await post_mm(client, opened(clevertap_id="__c"))
    settings = make_settings(
        state.settings.database_url, clevertap_api_url=None, clevertap_region="eu1"
    )
    async with uploader_for(state.engine, settings) as uploader:
        await uploader.run_once()
    [records] = all_sent(route)
    assert records[0]["objectId"] == "__c"
    assert all_deliveries(state.engine)[0].state == State.DELIVERED.value


# --- readiness -------------------------------------------------------------------------------


async def ready_checks(client: httpx.AsyncClient) -> tuple[int, dict[str, Any]]:
    resp = await client.get("/readyz")
    checks: dict[str, Any] = resp.json()["checks"]
    return resp.status_code, checks


async def wait_ready(client: httpx.AsyncClient) -> dict[str, Any]:
    """Readiness once the embedded worker has reported (its first beat is asynchronous)."""
    for _ in range(250):
        status, checks = await ready_checks(client)
        if status == 200:
            return checks
        await asyncio.sleep(0.02)
    pytest.fail(f"never ready: {checks}")


UNCONFIGURED_HINT = (
    "set BRIDGE_CLEVERTAP_ACCOUNT_ID and BRIDGE_CLEVERTAP_PASSCODE; events are kept until then"
)


async def test_readiness_unconfigured_clevertap_passes_while_nothing_waits(
    sqlite_url: str,
) -> None:
    settings = make_settings(sqlite_url, clevertap_account_id=None, clevertap_passcode=None)
    async with running_app(settings) as (client, _state):
        _status, checks = await ready_checks(client)
    assert checks["clevertap"] == {"ok": True, "configured": False, "hint": UNCONFIGURED_HINT}


@pytest.mark.parametrize(
    "body",
    [opened(clevertap_id="__c"), opened("unknown@example.com")],
    ids=["pending", "parked"],
)
async def test_readiness_unconfigured_clevertap_fails_once_events_wait(
    sqlite_url: str, body: dict[str, Any]
) -> None:
    settings = make_settings(
        sqlite_url, clevertap_account_id=None, clevertap_passcode=None, embedded_worker=True
    )
    async with running_app(settings) as (client, state):
        checks = await wait_ready(client)
        assert checks["clevertap"] == {"ok": True, "configured": False, "hint": UNCONFIGURED_HINT}
        await post_mm(client, body)
        status, checks = await ready_checks(client)
        assert all_deliveries(state.engine)[0].state in ("pending", "parked")
    assert status == 503
    assert checks["clevertap"] == {"ok": False, "configured": False, "hint": UNCONFIGURED_HINT}


async def test_readiness_paused_clevertap_is_not_ready(
    sqlite_url: str, clevertap_api: respx.MockRouter
) -> None:
    clevertap_api.post("/1/upload").mock(
        return_value=httpx.Response(
            401, json={"status": "fail", "error": "Account ID is not valid"}
        )
    )
    settings = make_settings(sqlite_url, embedded_worker=True, clevertap_linger_ms=0)
    async with running_app(settings) as (client, state):
        checks = await wait_ready(client)
        assert checks["clevertap"] == {"ok": True, "configured": True}
        await post_mm(client, opened(clevertap_id="__c"))
        await wait_until(
            lambda: bool(getattr(upstream_state(state.engine, "clevertap"), "paused", False))
        )
        status, checks = await ready_checks(client)
    assert status == 503
    clevertap = checks["clevertap"]
    assert clevertap["ok"] is False
    assert clevertap["configured"] is True
    assert clevertap["paused"] is True
    assert (
        clevertap["reason"]
        == "CleverTap rejected the credentials: HTTP 401: Account ID is not valid"
    )
    assert clevertap["paused_since"] is not None
    assert "ctmm-bridge resume clevertap" in clevertap["hint"]
    assert checks["worker"]["ok"] is True
    assert checks["mailmodo"]["ok"] is True
