"""The admin service on SQLite and PostgreSQL (batched replay and purge, keyset pages, stats),
what operators type (durations, times, cursors)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy.engine import Engine

import app.admin.service
from app.admin import service
from app.admin.schemas import Filters, PurgeRequest, ReplayRequest
from app.admin.service import AdminError
from app.clock import utcnow
from app.db import create_db_engine
from app.main import create_app
from app.outbox.models import State, Upstream
from app.state import BridgeState
from app.system.migrations import upgrade
from tests.admin.conftest import add_attempt, age_rows, post_campaign, row_of, set_rows
from tests.conftest import make_settings

# --- on both databases -------------------------------------------------------------------------


@pytest.fixture
async def running(database_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, BridgeState]]:
    """The real app on SQLite or PostgreSQL, with its state."""
    settings = make_settings(database_url)
    engine = create_db_engine(settings)
    upgrade(settings, engine)  # PostgreSQL is never migrated by the app itself
    engine.dispose()
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bridge.test") as c:
            yield c, application.state.bridge


async def test_pages_replay_purge_and_stats(
    running: tuple[httpx.AsyncClient, BridgeState], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, state = running
    engine = state.engine
    monkeypatch.setattr(app.admin.service, "BATCH_SIZE", 3)
    ids = await post_campaign(client, "c", *(f"u{i}@example.com" for i in range(7)))
    other = await post_campaign(client, "d", "ann@example.com")

    seen: list[int] = []
    cursor = None
    while True:
        page = service.list_deliveries(engine, Filters(), limit=2, cursor=cursor)
        seen += [i.id for i in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == sorted([*ids, *other], reverse=True)

    set_rows(engine, ids, state=State.DEAD.value, attempts=3, finished_at=utcnow())
    progress: list[int] = []
    plan = service.plan_replay(engine, ReplayRequest(states=[State.DEAD]))
    assert plan.matched == 7
    result = service.run_replay(engine, plan, progress=progress.append)
    assert (result.matched, result.replayed) == (7, 7)
    assert progress == [3, 3, 1]
    assert {row_of(engine, d).state for d in ids} == {"pending"}

    set_rows(engine, ids, state=State.DELIVERED.value, finished_at=utcnow())
    age_rows(engine, ids, days=10)
    add_attempt(engine, ids[0])
    purge = PurgeRequest(older_than="7d")
    dry = service.purge(engine, purge.model_copy(update={"dry_run": True}))
    assert (dry.matched, dry.deleted, dry.calls_deleted) == (7, 0, 1)
    steps: list[int] = []
    done = service.purge(engine, purge, progress=steps.append)
    assert (done.matched, done.deleted, done.calls_deleted) == (7, 7, 1)
    assert sum(steps) == 8

    stats = service.stats(engine)
    assert stats.totals["pending"] == 1
    assert stats.totals["delivered"] == 0
    assert stats.oldest_pending_age_seconds is not None

    detail = service.delivery_detail(engine, other[0])
    assert detail.inbound_call is not None
    assert detail.inbound_call.target == "d"


async def test_retry_cancel_on_both_databases(
    running: tuple[httpx.AsyncClient, BridgeState],
) -> None:
    client, state = running
    [a, b] = await post_campaign(client, "c", "a@example.com", "b@example.com")
    assert service.cancel_delivery(state.engine, a).state == "cancelled"
    assert service.retry_delivery(state.engine, a).previous_state == "cancelled"
    set_rows(state.engine, [b], state="delivered")
    with pytest.raises(AdminError) as err:
        service.retry_delivery(state.engine, b)
    assert err.value.status == 409
    assert service.retry_delivery(state.engine, b, force=True).state == "pending"
    assert service.resume_upstream(state.engine, Upstream.MAILMODO).resumed is False


# --- what operators type -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 2592000), ("12h", 43200), ("90m", 5400), ("3600s", 3600), ("1.5h", 5400)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert service.parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "30", "d", "3 days", "-1d", "0s", "1y"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(AdminError) as err:
        service.parse_duration(text)
    assert err.value.status == 422


def test_parse_when() -> None:
    now = datetime(2026, 1, 31, 12, tzinfo=UTC)
    assert service.parse_when("2h", now) == now - timedelta(hours=2)
    assert service.parse_when("2026-01-30T10:00:00Z") == datetime(2026, 1, 30, 10, tzinfo=UTC)
    assert service.parse_when("2026-01-30T10:00:00") == datetime(2026, 1, 30, 10, tzinfo=UTC)
    assert service.parse_when("2026-01-30T12:00:00+02:00") == datetime(2026, 1, 30, 10, tzinfo=UTC)
    with pytest.raises(AdminError):
        service.parse_when("yesterday")


def test_cursor_round_trip_and_refusals() -> None:
    assert service.decode_cursor(service.encode_cursor(12345)) == 12345
    assert service.decode_cursor(None) is None
    for bad in ("x", "aWQ6", "Zm9vOjE", "%%%"):
        with pytest.raises(AdminError):
            service.decode_cursor(bad)


def test_limit_bounds(engine: Engine) -> None:
    with pytest.raises(AdminError):
        service.list_deliveries(engine, Filters(), limit=0)
    with pytest.raises(AdminError):
        service.list_rejected(engine, limit=501)
    assert service.list_deliveries(engine, Filters(), limit=500).items == []


def test_admin_error_text() -> None:
    assert str(AdminError(409, "cannot cancel", "it is done")) == "cannot cancel: it is done"
    assert str(AdminError(404, "not found")) == "not found"
