"""The outbox's counts stay exact and stay index look-ups: what ``/metrics`` and
``/admin/stats`` read must not grow into a read of the whole table at a million rows (the
speed itself is measured in ``bench/backlog.py``, not here)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import Connection, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.sql import Executable

from app.admin import repository as admin_repo
from app.admin.repository import DeliveryFilter
from app.inbound.from_clevertap import ROUTES, build_record, parse_or_reject
from app.inbound.from_mailmodo import UPLOAD_UPSTREAM
from app.outbox import count_repository
from app.outbox.count_repository import COUNT_ONE, DIRECTION_OF, OLDEST_PENDING
from app.outbox.models import Delivery, Direction, Operation, State, Upstream
from tests.conftest import profiles_body
from tests.factories import add_deliveries, add_delivery

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def _fill(engine: Engine) -> None:
    add_deliveries(engine, "a@x.io", "b@x.io", created_at=T0 + timedelta(minutes=5))
    add_delivery(engine, "c@x.io", created_at=T0 + timedelta(minutes=1))
    add_delivery(engine, "d@x.io", state=State.DELIVERED, created_at=T0)
    add_delivery(engine, "e@x.io", state=State.DEAD, created_at=T0 - timedelta(hours=1))
    add_deliveries(engine, "f@x.io", operation=Operation.EVENT_UPLOAD, created_at=T0)
    add_delivery(engine, "g@x.io", operation=Operation.EVENT_UPLOAD, state=State.PARKED)


def test_counts_are_the_rows_of_every_upstream_and_state(db: Engine) -> None:
    _fill(db)
    with db.connect() as conn:
        counts = count_repository.counts_by_upstream_and_state(conn)
        truth = conn.execute(
            select(Delivery.upstream, Delivery.state, func.count()).group_by(
                Delivery.upstream, Delivery.state
            )
        ).all()
    assert len(counts) == len(Upstream) * len(State)
    assert {k: n for k, n in counts.items() if n} == {
        (Upstream(u), State(s)): n for u, s, n in truth
    }
    assert counts[Upstream.MAILMODO, State.PENDING] == 3
    assert counts[Upstream.CLEVERTAP, State.FAILED] == 0


def test_oldest_pending_is_per_upstream_and_ignores_finished_rows(db: Engine) -> None:
    with db.connect() as conn:
        assert count_repository.oldest_pending_by_upstream(conn) == {}
    _fill(db)
    with db.connect() as conn:
        oldest = count_repository.oldest_pending_by_upstream(conn)
    # the dead row (an hour older) and the delivered one do not count
    assert oldest == {Upstream.MAILMODO: T0 + timedelta(minutes=1), Upstream.CLEVERTAP: T0}
    assert all(v.tzinfo is not None for v in oldest.values())


def test_counts_by_direction_match_the_stored_direction(db: Engine) -> None:
    _fill(db)
    with db.connect() as conn:
        derived = {
            (DIRECTION_OF[u].value, s.value): n
            for (u, s), n in count_repository.counts_by_upstream_and_state(conn).items()
            if n
        }
        truth = conn.execute(
            select(Delivery.direction, Delivery.state, func.count()).group_by(
                Delivery.direction, Delivery.state
            )
        ).all()
    assert derived == {(d, s): n for d, s, n in truth}


def test_every_inbound_route_stores_the_direction_of_its_upstream() -> None:
    """Counts by direction are counts by upstream only while this holds."""
    assert set(DIRECTION_OF.values()) == set(Direction)
    assert DIRECTION_OF[UPLOAD_UPSTREAM] is Direction.MAILMODO_TO_CLEVERTAP  # from_mailmodo
    body = orjson.dumps(profiles_body("who@x.io"))
    parsed = parse_or_reject(orjson.loads(body), Operation.CAMPAIGN_TRIGGER)
    for operation in ROUTES:  # every CleverTap route
        record = build_record(
            operation=operation,
            target="t",
            parsed=parsed,
            body=body,
            content_type=None,
            dedup_key=None,
            request_id=None,
        )
        for d in record.deliveries:
            assert DIRECTION_OF[d.upstream] is d.direction


# -- query plans (SQLite) ---------------------------------------------------------------------


def plan(conn: Connection, stmt: Executable, params: dict[str, Any]) -> str:
    compiled = stmt.compile(conn)
    sql, args = str(compiled), compiled.construct_params(params)
    positional = [args[name] for name in compiled.positiontup or []]
    rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", tuple(positional)).all()
    return " | ".join(str(r[-1]) for r in rows)


def test_a_count_is_a_covering_index_range(engine: Engine) -> None:
    with engine.connect() as conn:
        shown = plan(conn, COUNT_ONE, {"upstream": "mailmodo", "state": "pending"})
    assert "COVERING INDEX ix_deliveries_due (upstream=? AND state=?)" in shown, shown


def test_the_oldest_pending_item_is_one_look_up_in_the_partial_index(engine: Engine) -> None:
    with engine.connect() as conn:
        shown = plan(conn, OLDEST_PENDING, {"upstream": "mailmodo"})
    assert "ix_deliveries_pending_created (upstream=?)" in shown, shown
    assert "TEMP B-TREE" not in shown


@pytest.mark.parametrize(
    "f",
    [
        DeliveryFilter(states=("pending",)),
        DeliveryFilter(states=("dead",), created_after=T0),
    ],
)
def test_a_page_of_one_state_reads_off_the_index_without_sorting(
    engine: Engine, f: DeliveryFilter
) -> None:
    where = admin_repo.conditions(f)
    stmt = (
        select(*admin_repo.LIST_COLUMNS)
        .where(*where, Delivery.id < 10**6)
        .order_by(Delivery.id.desc())
        .limit(51)
    )
    with engine.connect() as conn:
        shown = plan(conn, stmt, {})
    assert "ix_deliveries_state_id (state=?" in shown, shown
    assert "TEMP B-TREE" not in shown, shown
