"""Operator actions on SQLite and PostgreSQL: batched replay and purge (with the reads that
check them: keyset pages, stats, detail), retry, cancel and resume of one item."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager

import app.admin.actions
from app.admin import actions, service
from app.admin.schemas import Filters, PurgeRequest, ReplayRequest
from app.admin.service import AdminError
from app.clock import utcnow
from app.db import create_db_engine
from app.main import create_app
from app.outbox.models import State, Upstream
from app.state import BridgeState
from app.system.migrations import upgrade
from tests.admin.conftest import age_rows, post_campaign, row_of
from tests.conftest import make_settings
from tests.factories import add_attempt, set_rows

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
    monkeypatch.setattr(app.admin.actions, "BATCH_SIZE", 3)
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
    plan = actions.plan_replay(engine, ReplayRequest(states=[State.DEAD]))
    assert plan.matched == 7
    result = actions.run_replay(engine, plan, progress=progress.append)
    assert (result.matched, result.replayed) == (7, 7)
    assert progress == [3, 3, 1]
    assert {row_of(engine, d).state for d in ids} == {"pending"}

    set_rows(engine, ids, state=State.DELIVERED.value, finished_at=utcnow())
    age_rows(engine, ids, days=10)
    add_attempt(engine, ids[0])
    purge = PurgeRequest(older_than="7d")
    dry = actions.purge(engine, purge.model_copy(update={"dry_run": True}))
    assert (dry.matched, dry.deleted, dry.calls_deleted) == (7, 0, 1)
    steps: list[int] = []
    done = actions.purge(engine, purge, progress=steps.append)
    assert (done.matched, done.deleted, done.calls_deleted) == (7, 7, 1)
    assert sum(steps) == 8

    stats = service.stats(engine)
    assert stats.totals["pending"] == 1
    assert stats.totals["delivered"] == 0
    assert stats.oldest_pending_age_seconds is not None

    detail = service.delivery_detail(engine, other[0])
    assert detail.inbound_call is not None
    assert detail.inbound_call.target == "d"


async def test_replay_and_purge_in_parts_on_both_databases(
    running: tuple[httpx.AsyncClient, BridgeState], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A time budget used up after every batch: each part says where to go on, and following
    the cursors changes every row exactly once."""
    client, state = running
    engine = state.engine
    monkeypatch.setattr(app.admin.actions, "BATCH_SIZE", 2)
    ids = await post_campaign(client, "c", *(f"p{i}@example.com" for i in range(5)))
    set_rows(engine, ids, state=State.DEAD.value, attempts=3, finished_at=utcnow())
    replay = ReplayRequest(states=[State.DEAD], max_seconds=1e-9)
    parts = [actions.replay(engine, replay)]
    while not parts[-1].complete:
        cursor = parts[-1].next_cursor
        parts.append(actions.replay(engine, replay.model_copy(update={"cursor": cursor})))
    assert [(p.replayed, p.next_cursor) for p in parts] == [
        (2, f"r{ids[1]}"),
        (2, f"r{ids[3]}"),
        (1, None),
    ]
    assert {row_of(engine, d).state for d in ids} == {"pending"}

    set_rows(engine, ids, state=State.DELIVERED.value, finished_at=utcnow())
    age_rows(engine, ids, days=10)
    purge = PurgeRequest(older_than="7d", max_seconds=1e-9)
    done = [actions.purge(engine, purge)]
    while not done[-1].complete:
        cursor = done[-1].next_cursor
        done.append(actions.purge(engine, purge.model_copy(update={"cursor": cursor})))
    assert [p.next_cursor for p in done] == [f"d{ids[1]}", f"d{ids[3]}", f"d{ids[4]}", None]
    assert sum(p.deleted for p in done) == 5
    assert sum(p.calls_deleted for p in done) == 1
    with pytest.raises(AdminError):
        actions.purge(engine, purge.model_copy(update={"cursor": "r1"}))


async def test_retry_cancel_on_both_databases(
    running: tuple[httpx.AsyncClient, BridgeState],
) -> None:
    client, state = running
    [a, b] = await post_campaign(client, "c", "a@example.com", "b@example.com")
    assert actions.cancel_delivery(state.engine, a).state == "cancelled"
    assert actions.retry_delivery(state.engine, a).previous_state == "cancelled"
    set_rows(state.engine, [b], state="delivered")
    with pytest.raises(AdminError) as err:
        actions.retry_delivery(state.engine, b)
    assert err.value.status == 409
    assert actions.retry_delivery(state.engine, b, force=True).state == "pending"
    assert actions.resume_upstream(state.engine, Upstream.MAILMODO).resumed is False
