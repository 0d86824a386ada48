"""Fixtures for delivery tests: deliverers on the running app's database, fake Mailmodo
answers, and CleverTap calls posted the real way for the tests that are about ingest.

Rows are written and read by ``tests.factories``; time is the ``clock`` fixture of
``tests/conftest.py``.

The helpers are plain functions so that other test packages can import them too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy import text
from sqlalchemy.engine import Engine

from app.config import Settings
from app.state import BridgeState
from app.worker.build import build_mailmodo_deliverer
from app.worker.delivery import MailmodoDeliverer
from tests.conftest import CT_AUTH, profiles_body

#: Every Mailmodo call the bridge makes, whatever the operation and target.
ANY_CALL = r"^/(api/v1/triggerCampaign|hooks/start|hooks/abort)/[^/]+$"


# --- deliverers -----------------------------------------------------------------------------

DelivererFactory = Callable[..., MailmodoDeliverer]


@pytest.fixture
async def make_deliverer(state: BridgeState) -> AsyncIterator[DelivererFactory]:
    """Builds deliverers on the app's database; ``settings`` overrides apply to each."""
    built: list[MailmodoDeliverer] = []

    def factory(worker_id: str = "test-worker", **overrides: Any) -> MailmodoDeliverer:
        settings = state.settings.model_copy(update=overrides) if overrides else state.settings
        deliverer = build_mailmodo_deliverer(state.engine, settings, worker_id)
        assert deliverer is not None
        built.append(deliverer)
        return deliverer

    yield factory
    for deliverer in built:
        await deliverer.client.aclose()


@pytest.fixture
def deliverer(make_deliverer: DelivererFactory) -> MailmodoDeliverer:
    return make_deliverer()


# --- fake Mailmodo answers ------------------------------------------------------------------


def mm_ok(ref: str = "be2bab1a-e0a6-419c-8fe0-1d3557c2af63") -> httpx.Response:
    return httpx.Response(
        200, json={"success": True, "message": "Email scheduled successfully", "ref": ref}
    )


def mm_status(
    status: int, body: Any = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    if body is None:
        body = {"error": "error", "message": f"Some Internal Error Occurred: {status}"}
    if isinstance(body, str):
        return httpx.Response(status, text=body, headers=headers)
    return httpx.Response(status, json=body, headers=headers)


def any_call(router: respx.MockRouter) -> respx.Route:
    """One route for every Mailmodo call the bridge makes."""
    return router.post(path__regex=ANY_CALL)


# --- creating deliveries the real way -------------------------------------------------------


async def post_ct(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], **headers: str
) -> list[int]:
    """POST a CleverTap webhook call; the ids of the deliveries it created."""
    resp = await client.post(path, json=body, headers={**CT_AUTH, **headers})
    assert resp.status_code == 200, resp.text
    ids: list[int] = resp.json()["ids"]
    return ids


async def post_campaign(
    client: httpx.AsyncClient, *emails: str, campaign_id: str = "camp-1", **body: Any
) -> list[int]:
    """One delivery per email to ``campaign_id`` (CleverTap's profile-variables body)."""
    payload = profiles_body(*emails, **body)
    return await post_ct(client, f"/clevertap/campaigns/{campaign_id}", payload)


# --- nudging rows (rows are read and written by tests/factories.py) ---------------------------


def reset_rate_slots(engine: Engine) -> None:
    """Forget any Retry-After hold-off so the next call may go at once."""
    with engine.begin() as conn:
        conn.execute(text("UPDATE rate_slots SET next_at = 0"))


def seconds_between(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds()


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]], within: float = 5.0, interval: float = 0.02
) -> None:
    """Poll ``predicate`` until it holds; fail the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within} s")
        await asyncio.sleep(interval)


@pytest.fixture
def settings_for(state: BridgeState) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        return state.settings.model_copy(update=overrides)

    return build
