"""Fixtures for delivery tests: deliverers on the running app's database, a movable clock,
and helpers to create deliveries the real way (CleverTap routes over ASGI) and read them back.

The helpers are plain functions so that other test packages can import them too.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy import select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.clock import jitter_rng, utcnow
from app.config import Settings
from app.outbox.models import Attempt, Delivery, State
from app.state import BridgeState
from app.system.models import UpstreamState
from app.worker.build import build_mailmodo_deliverer
from app.worker.delivery import MailmodoDeliverer
from tests.conftest import CT_AUTH, profiles_body

#: Every Mailmodo call the bridge makes, whatever the operation and target.
ANY_CALL = r"^/(api/v1/triggerCampaign|hooks/start|hooks/abort)/[^/]+$"


# --- a clock the worker sees ----------------------------------------------------------------


class FakeClock:
    """Real time plus an offset that tests move forward (the worker's view of "now")."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Moves time for every worker module (claims, leases, pauses, records), not for ingest."""
    fake = FakeClock()
    for name, module in list(sys.modules.items()):
        if name.startswith("app.worker.") and getattr(module, "utcnow", None) is utcnow:
            monkeypatch.setattr(module, "utcnow", fake.now)
    return fake


@pytest.fixture
def seeded_jitter() -> Iterator[int]:
    """A seeded jitter source; the seed is returned so tests can replay the same draws."""
    seed = 20240611
    jitter_rng.seed(seed)
    yield seed
    jitter_rng.seed()


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


# --- reading and nudging rows ---------------------------------------------------------------


def get_delivery(engine: Engine, delivery_id: int) -> Delivery:
    with Session(engine) as session:
        row = session.get(Delivery, delivery_id)
        assert row is not None
        session.expunge(row)
        return row


def all_deliveries(engine: Engine) -> list[Delivery]:
    with Session(engine) as session:
        rows = list(session.scalars(select(Delivery).order_by(Delivery.id)))
        session.expunge_all()
        return rows


def attempts_of(engine: Engine, delivery_id: int) -> list[Attempt]:
    with Session(engine) as session:
        rows = list(
            session.scalars(
                select(Attempt).where(Attempt.delivery_id == delivery_id).order_by(Attempt.id)
            )
        )
        session.expunge_all()
        return rows


def upstream_state(engine: Engine, upstream: str = "mailmodo") -> UpstreamState | None:
    with Session(engine) as session:
        row = session.get(UpstreamState, upstream)
        if row is not None:
            session.expunge(row)
        return row


def make_due(engine: Engine, ids: list[int] | None = None) -> None:
    """Pending rows become due now (skips the backoff wait); leases are left alone."""
    stmt = (
        update(Delivery)
        .where(Delivery.state == State.PENDING.value)
        .values(next_attempt_at=utcnow() - timedelta(seconds=1))
    )
    if ids is not None:
        stmt = stmt.where(Delivery.id.in_(ids))
    with engine.begin() as conn:
        conn.execute(stmt)


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
