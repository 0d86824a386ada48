"""The plans SQLite picks for the statements the bridge runs over and over (maintenance ticks,
counts, worker rounds), read with EXPLAIN QUERY PLAN from the statements as the driver got
them. The bridge never runs ANALYZE: without statistics SQLite chose, for each of these, an
index that made it read every parked or pending row from the table (8-21 ms a tick at 30,000
parked rows, growing with the backlog). A plan depends on the schema and the SQL, not on the
rows, so a few rows are enough to pin it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy.engine import Engine

from app.clock import utcnow
from app.consent import repository as consent_repo
from app.db import create_db_engine
from app.outbox import count_repository, leases, repository, transitions
from app.outbox.models import State
from app.system.migrations import upgrade
from tests.conftest import make_settings
from tests.factories import add_deliveries, add_events, add_identity, add_parked, all_deliveries
from tests.plans import STATE_WALK, only_plan


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    settings = make_settings(sqlite_url)
    engine = create_db_engine(settings)
    upgrade(settings, engine)
    add_parked(engine, *(f"p{i}@example.com" for i in range(20)))
    add_events(engine, *(f"q{i}@example.com" for i in range(20)))
    add_identity(engine, "p0@example.com", "__p0")
    yield engine
    engine.dispose()


def test_expiring_parked_rows_reads_the_due_index_not_every_parked_row(engine: Engine) -> None:
    plan = only_plan(
        engine,
        lambda c: repository.expire_parked(c, transitions.expire_parked(utcnow(), ttl_hours=72)),
        "UPDATE deliveries",
    )
    assert "ix_deliveries_due" in plan, plan
    assert STATE_WALK not in plan, plan


def test_releasing_resolvable_parked_rows_reads_their_partial_index(engine: Engine) -> None:
    plan = only_plan(
        engine,
        lambda c: repository.release_resolvable_parked(c, transitions.release_parked(utcnow())),
        "UPDATE deliveries",
    )
    assert "ix_deliveries_parked_email" in plan, plan
    assert STATE_WALK not in plan, plan


def test_counting_parked_emails_reads_their_partial_index(engine: Engine) -> None:
    plan = only_plan(engine, count_repository.parked_emails, "FROM deliveries")
    assert "ix_deliveries_parked_email" in plan, plan
    assert STATE_WALK not in plan, plan


def test_reclaiming_old_leases_looks_the_leased_ids_up(engine: Engine) -> None:
    add_deliveries(
        engine, *(f"l{i}@example.com" for i in range(30)), leased_by="gone", lease_token="t"
    )
    plan = only_plan(
        engine,
        lambda c: leases.reclaim_leases(
            c,
            transitions.reclaim_lease(utcnow()),
            ["gone"],
            leased_before=utcnow() - timedelta(seconds=1),
        ),
        "UPDATE deliveries",
    )
    assert "INTEGER PRIMARY KEY" in plan or "rowid=?" in plan, plan  # the ids, one by one
    assert STATE_WALK not in plan, plan


def test_the_consent_log_is_looked_up_by_delivery_through_an_index(engine: Engine) -> None:
    plan = only_plan(
        engine, lambda c: consent_repo.logged_deliveries(c, [1, 2, 3]), "FROM consent_log"
    )
    assert "ix_consent_log_delivery_id" in plan, plan
    assert "SCAN" not in plan, plan


def test_the_fixed_statements_still_do_their_work(engine: Engine) -> None:
    """The same rows change as before: one parked row has an identity, none has expired."""
    now = utcnow()
    with engine.begin() as conn:
        assert repository.release_resolvable_parked(conn, transitions.release_parked(now)) == 1
        assert repository.expire_parked(conn, transitions.expire_parked(now, ttl_hours=72)) == 0
        assert count_repository.parked_emails(conn) == 19
        later = now + timedelta(hours=100)
        expired = repository.expire_parked(conn, transitions.expire_parked(later, ttl_hours=72))
        assert expired == 19
        assert count_repository.parked_emails(conn) == 0
    states = {
        (r.email, r.state, r.clevertap_id)
        for r in all_deliveries(engine)
        if r.email and r.email.startswith("p")
    }
    assert ("p0@example.com", State.PENDING.value, "__p0") in states
    assert sum(1 for _, s, _ in states if s == State.DEAD.value) == 19
