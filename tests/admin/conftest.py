"""Helpers for the admin tests: deliveries created the real way (the webhook routes), then moved
to the state a test needs by updating their rows (``tests.factories``), as a worker would have."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from app.clock import utcnow
from app.outbox.models import Delivery, InboundCall
from app.state import BridgeState
from tests.conftest import ADMIN_TOKEN, CT_AUTH, MM_SECRET, profiles_body

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
#: What a bulk replay or purge that finished within its time adds to its answer.
DONE = {"complete": True, "next_cursor": None}


async def post_campaign(client: httpx.AsyncClient, campaign: str, *emails: str) -> list[int]:
    """One CleverTap call for ``emails``; returns the ids of the deliveries it made."""
    resp = await client.post(
        f"/clevertap/campaigns/{campaign}", json=profiles_body(*emails), headers=CT_AUTH
    )
    assert resp.status_code == 200, resp.text
    ids: list[int] = resp.json()["ids"]
    return ids


async def post_activity(client: httpx.AsyncClient, email: str, event: str = "opened") -> list[int]:
    """A Mailmodo callback with no CleverTap ID: parked until the email's ID is learnt."""
    resp = await client.post(
        f"/mailmodo/{MM_SECRET}/events", json={"event": event, "email": email, "timestamp": 1}
    )
    assert resp.status_code == 200, resp.text
    ids: list[int] = resp.json()["ids"]
    return ids


def age_rows(engine: Engine, ids: list[int], days: float) -> datetime:
    """Make deliveries and their inbound calls look ``days`` old; returns that moment."""
    then = utcnow() - timedelta(days=days)
    with engine.begin() as conn:
        conn.execute(
            update(Delivery)
            .where(Delivery.id.in_(ids))
            .values(created_at=then, updated_at=then, next_attempt_at=then)
        )
        calls = select(Delivery.inbound_call_id).where(Delivery.id.in_(ids))
        conn.execute(update(InboundCall).where(InboundCall.id.in_(calls)).values(received_at=then))
    return then


def row_of(engine: Engine, delivery_id: int) -> Any:
    """The delivery's row as stored (attribute access by column name)."""
    with engine.connect() as conn:
        return conn.execute(select(Delivery.__table__).where(Delivery.id == delivery_id)).one()


@pytest.fixture
def engine_of(state: BridgeState) -> Engine:
    """The running app's engine."""
    return state.engine
