"""Admin lists at scale: the plan SQLite picks for a page (read with EXPLAIN QUERY PLAN)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy.engine import Engine

from app.admin import repository as admin_repo
from app.clock import utcnow
from app.db import create_db_engine
from app.outbox.models import State
from app.system.migrations import upgrade
from tests.conftest import make_settings
from tests.factories import add_deliveries, all_deliveries
from tests.plans import only_plan


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    settings = make_settings(sqlite_url)
    engine = create_db_engine(settings)
    upgrade(settings, engine)
    add_deliveries(engine, *(f"d{i}@example.com" for i in range(30)), state=State.DELIVERED)
    yield engine
    engine.dispose()


def test_a_later_page_of_a_time_range_stays_on_the_time_index(engine: Engine) -> None:
    """With the cursor written ``id < ?`` SQLite walked the state's id index below the cursor,
    reading every row of that state from the table (271 ms for the last page of 1,000,000)."""
    since = utcnow() - timedelta(hours=1)
    f = admin_repo.DeliveryFilter(states=(State.DELIVERED.value,), updated_after=since)
    plan = only_plan(
        engine,
        lambda c: admin_repo.list_deliveries(c, f, limit=51, before_id=10**6),
        "FROM deliveries",
    )
    assert "ix_deliveries_state_updated_at_upstream (state=? AND updated_at>?)" in plan, plan

    # The page is the same: newest first, below the cursor, within the range.
    ids = sorted((d.id for d in all_deliveries(engine)), reverse=True)
    with engine.connect() as conn:
        page = admin_repo.list_deliveries(conn, f, limit=5, before_id=ids[3])
        assert [r.id for r in page] == ids[4:9]
        later = admin_repo.DeliveryFilter(
            states=(State.DELIVERED.value,), updated_after=utcnow() + timedelta(hours=1)
        )
        assert admin_repo.list_deliveries(conn, later, limit=5, before_id=ids[3]) == []
