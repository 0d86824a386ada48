"""LISTEN/NOTIFY of new work on PostgreSQL: the ingest transaction announces at its commit
(not before, not on rollback, not for duplicates), the listener wakes its worker and survives
a lost connection. With real processes: ``tests/test_scale_out.py``."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from app.clock import utcnow
from app.db import create_db_engine
from app.outbox import repository
from app.system.migrations import upgrade
from app.worker.notify import OutboxListener, start_listener
from tests.conftest import _reset_postgres, make_settings
from tests.outbox.test_writer import record


def test_sqlite_has_no_listener() -> None:
    assert start_listener(create_engine("sqlite://"), lambda: None) is None


@pytest.fixture
def pg(postgres_server: str) -> Iterator[Engine]:
    _reset_postgres(postgres_server)
    settings = make_settings(postgres_server)
    engine = create_db_engine(settings)
    upgrade(settings, engine)
    yield engine
    engine.dispose()


@pytest.fixture
def woken(pg: Engine) -> Iterator[threading.Event]:
    event = threading.Event()
    listener = start_listener(pg, event.set)
    assert isinstance(listener, OutboxListener)
    assert listener.listening.wait(5)
    assert event.wait(1)  # the wake-up of every (re)connect
    event.clear()
    yield event
    listener.stop()


def _ingest(conn: object, key: str) -> None:
    repository.ingest_batch(
        conn,  # type: ignore[arg-type]
        [record("a@example.com", key=key)],
        dedup_window_seconds=3600,
        now=utcnow(),
    )


@pytest.mark.postgres
def test_the_commit_wakes_the_listener_not_before(pg: Engine, woken: threading.Event) -> None:
    with pg.connect() as conn:
        tx = conn.begin()
        _ingest(conn, "k1")
        assert not woken.wait(0.3), "nothing is due before the commit"
        tx.commit()
    assert woken.wait(2)


@pytest.mark.postgres
def test_rollbacks_and_duplicates_announce_nothing(pg: Engine, woken: threading.Event) -> None:
    with pg.connect() as conn:
        tx = conn.begin()
        _ingest(conn, "k1")
        tx.rollback()
    assert not woken.wait(0.3)
    with pg.begin() as conn:
        _ingest(conn, "k2")
    assert woken.wait(2)
    woken.clear()
    with pg.begin() as conn:
        _ingest(conn, "k2")  # a repeat: no new work
    assert not woken.wait(0.3)


@pytest.mark.postgres
def test_the_listener_comes_back_after_its_connection_is_killed(
    pg: Engine, woken: threading.Event
) -> None:
    with pg.begin() as conn:
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN %' AND pid <> pg_backend_pid()"
                " AND datname = current_database()"
            )
        )
    assert woken.wait(5), "the reconnect wakes the worker once"
    woken.clear()
    with pg.begin() as conn:
        _ingest(conn, "k3")
    assert woken.wait(2)
