"""Helpers for the Mailmodo → CleverTap integration tests (routes, identity, uploader, parking).

Plain functions and context managers, imported by the test modules that need them:
the real app over ASGI (with its own settings when a test needs them), Mailmodo callbacks
posted the real way (for the tests about ingest), and fake CleverTap upload answers. Rows
are written and read by ``tests.factories``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import httpx
import respx
from asgi_lifespan import LifespanManager
from sqlalchemy.engine import Engine

from app.config import Settings
from app.db import create_db_engine
from app.main import create_app
from app.state import BridgeState
from app.system.migrations import upgrade
from app.worker.build import build_clevertap_uploader
from app.worker.upload import CleverTapUploader
from tests.conftest import CT_AUTH, MM_SECRET, profiles_body
from tests.factories import upstream_state

ACCOUNT_HEADERS = {
    "X-CleverTap-Account-Id": "TEST-ACCOUNT",
    "X-CleverTap-Passcode": "TEST-PASSCODE",
}

# --- the app ---------------------------------------------------------------------------------


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, BridgeState]]:
    """The real app with ``settings``, started, and a client that talks to it over ASGI.

    PostgreSQL is migrated first (the app only migrates SQLite by itself)."""
    if not settings.is_sqlite:
        engine = create_db_engine(settings)
        try:
            upgrade(settings, engine)
        finally:
            engine.dispose()
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bridge.test") as c:
            state: BridgeState = app.state.bridge
            yield c, state


@asynccontextmanager
async def uploader_for(
    engine: Engine, settings: Settings, worker_id: str = "w"
) -> AsyncIterator[CleverTapUploader]:
    """The uploader the runner would build, closed afterwards."""
    uploader = build_clevertap_uploader(engine, settings, worker_id)
    assert uploader is not None
    try:
        yield uploader
    finally:
        await uploader.client.aclose()


# --- calls into the bridge -------------------------------------------------------------------


def events_path(event: str | None = None, secret: str = MM_SECRET) -> str:
    base = f"/mailmodo/{secret}/events"
    return base if event is None else f"{base}/{event}"


async def post_mm(
    client: httpx.AsyncClient,
    body: Any,
    event: str | None = None,
    *,
    secret: str = MM_SECRET,
    expect: int = 200,
) -> dict[str, Any]:
    """POST a Mailmodo callback and return its JSON answer (checking the status)."""
    resp = await client.post(events_path(event, secret), json=body)
    assert resp.status_code == expect, resp.text
    answer: dict[str, Any] = resp.json()
    return answer


async def learn_identity(
    client: httpx.AsyncClient, *emails: str, campaign: str = "x"
) -> dict[str, Any]:
    """A CleverTap campaign call for ``emails``: the bridge learns ``__obj<i>`` for each."""
    resp = await client.post(
        f"/clevertap/campaigns/{campaign}", json=profiles_body(*emails), headers=CT_AUTH
    )
    assert resp.status_code == 200, resp.text
    answer: dict[str, Any] = resp.json()
    return answer


def opened(
    email: str | None = "ann@example.com",
    *,
    event_id: str | None = None,
    clevertap_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An activity event in the bridge's own shape."""
    body: dict[str, Any] = {"event": "opened", "timestamp": 1_700_000_000}
    if email is not None:
        body["email"] = email
    if event_id is not None:
        body["event_id"] = event_id
    if clevertap_id is not None:
        body["clevertap_id"] = clevertap_id
    body.update(extra)
    return body


# --- the fake CleverTap ----------------------------------------------------------------------


def sent_records(request: httpx.Request) -> list[dict[str, Any]]:
    body = json.loads(request.content)
    assert set(body) == {"d"}, body
    records: list[dict[str, Any]] = body["d"]
    return records


def all_sent(route: respx.Route) -> list[list[dict[str, Any]]]:
    """The records of every upload request the route received, request by request."""
    return [sent_records(call.request) for call in route.calls]


def ct_success(request: httpx.Request) -> httpx.Response:
    """CleverTap's answer when every record was processed."""
    n = len(sent_records(request))
    return httpx.Response(200, json={"status": "success", "processed": n, "unprocessed": []})


def ct_partial(
    skipped: dict[int, tuple[int, str]], *, number_in_error: bool = True
) -> Callable[[httpx.Request], httpx.Response]:
    """A partial answer skipping the 1-based record numbers in ``skipped`` with (code, error),
    echoing each skipped record as CleverTap does."""

    def answer(request: httpx.Request) -> httpx.Response:
        records = sent_records(request)
        unprocessed = []
        for number, (code, error) in skipped.items():
            text = f"{error} Skipped record number : {number}" if number_in_error else error
            unprocessed.append(
                {"status": "fail", "code": code, "error": text, "record": records[number - 1]}
            )
        return httpx.Response(
            200,
            json={
                "status": "partial",
                "processed": len(records) - len(unprocessed),
                "unprocessed": unprocessed,
            },
        )

    return answer


# --- rows ------------------------------------------------------------------------------------


def is_paused(engine: Engine, upstream: str = "clevertap") -> bool:
    """Rows are read and written by ``tests.factories``; this one reads the pause switch."""
    row = upstream_state(engine, upstream)
    return row is not None and row.paused


async def wait_until(predicate: Callable[[], bool], within: float = 10.0) -> bool:
    """Poll ``predicate`` (a cheap DB read) until it holds or ``within`` s pass; its last value."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            return predicate()
        await asyncio.sleep(0.02)
    return True


def close_to(value: datetime, expected: datetime, seconds: float = 30.0) -> bool:
    return abs((value - expected).total_seconds()) <= seconds
