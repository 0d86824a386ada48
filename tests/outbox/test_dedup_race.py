"""Two replicas storing the same CleverTap call at the same instant, on PostgreSQL: both pass
the dedup look-up before either commits. The key is taken by ``INSERT … ON CONFLICT DO
NOTHING``, so the second transaction waits for the first, then records a duplicate of it in
the same attempt — no unique-constraint failure, no retry, one set of deliveries.

(The same race with real ``serve`` processes: ``tests/test_scale_out.py``.)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from app.clock import utcnow
from app.db import create_db_engine
from app.outbox import repository
from app.outbox.models import CallStatus, Delivery, InboundCall
from app.outbox.schemas import IngestResult
from app.system.migrations import upgrade
from tests.conftest import _reset_postgres, make_settings
from tests.outbox.test_writer import record

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg(postgres_server: str) -> Iterator[Engine]:
    _reset_postgres(postgres_server)
    settings = make_settings(postgres_server)
    engine = create_db_engine(settings)
    upgrade(settings, engine)
    yield engine
    engine.dispose()


def _ingest_in_thread(engine: Engine, records: list, out: list[object]) -> threading.Thread:  # type: ignore[type-arg]
    def run() -> None:
        try:
            with engine.begin() as conn:
                out.extend(
                    repository.ingest_batch(conn, records, dedup_window_seconds=3600, now=utcnow())
                )
        except Exception as exc:  # the old read-then-write failed here
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _calls(engine: Engine) -> list[tuple[str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(InboundCall.status, InboundCall.dedup_key).order_by(InboundCall.id)
        ).all()
    return [(str(status), key) for status, key in rows]


def test_second_transaction_waits_and_records_a_duplicate(pg: Engine) -> None:
    first = pg.connect()
    tx = first.begin()
    mine = repository.ingest_batch(
        first, [record("a@example.com", key="k1")], dedup_window_seconds=3600, now=utcnow()
    )
    # The second replica's batch: the same call, a repeat of it, and an unrelated keyed call.
    out: list[object] = []
    thread = _ingest_in_thread(
        pg,
        [
            record("a@example.com", key="k1"),
            record("a@example.com", key="k1"),
            record("b@example.com", key="k2"),
        ],
        out,
    )
    thread.join(0.5)
    assert thread.is_alive(), "the second insert must wait for the first transaction"
    tx.commit()
    first.close()
    thread.join(10)
    assert not thread.is_alive()
    assert all(isinstance(r, IngestResult) for r in out), out
    results = [r for r in out if isinstance(r, IngestResult)]
    assert [r.duplicate for r in results] == [True, True, False]
    assert results[0].call_id == results[1].call_id == mine[0].call_id
    assert results[0].delivery_ids == mine[0].delivery_ids
    statuses = [s for s, _ in _calls(pg)]
    assert statuses.count(CallStatus.ACCEPTED.value) == 2  # k1 (first) and k2
    assert statuses.count(CallStatus.DUPLICATE.value) == 2
    with pg.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Delivery)).scalar_one() == 2


def test_a_winner_that_rolls_back_leaves_the_key_to_the_waiter(pg: Engine) -> None:
    first = pg.connect()
    tx = first.begin()
    repository.ingest_batch(
        first, [record("a@example.com", key="k1")], dedup_window_seconds=3600, now=utcnow()
    )
    out: list[object] = []
    thread = _ingest_in_thread(pg, [record("a@example.com", key="k1")], out)
    thread.join(0.5)
    tx.rollback()
    first.close()
    thread.join(10)
    assert len(out) == 1, out
    assert isinstance(out[0], IngestResult), out
    assert out[0].duplicate is False
    assert _calls(pg) == [(CallStatus.ACCEPTED.value, "k1")]


def test_opposite_key_orders_do_not_deadlock(pg: Engine) -> None:
    """Replica A stores k1 then k2, replica B k2 then k1, at once: keys are inserted in key
    order, so B waits on A (or A on B) instead of each holding what the other needs."""
    first = pg.connect()
    tx = first.begin()
    repository.ingest_batch(
        first,
        [record("a@example.com", key="k1"), record("b@example.com", key="k2")],
        dedup_window_seconds=3600,
        now=utcnow(),
    )
    out: list[object] = []
    thread = _ingest_in_thread(
        pg, [record("b@example.com", key="k2"), record("a@example.com", key="k1")], out
    )
    thread.join(0.5)
    tx.commit()
    first.close()
    thread.join(10)
    assert [getattr(r, "duplicate", r) for r in out] == [True, True]
