"""The one-step SQLite timestamp conversion of the ingest hot path stores exactly what the
typed column (``UTCDateTime`` over SQLAlchemy's SQLite ``DATETIME``) would; SQLite writers of
several processes queue on the lock file."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import OperationalError

import app.db as db_module
from app.db import UTCDateTime, create_db_engine, sqlite_utc_text
from tests.conftest import make_settings

DIALECT = sqlite.dialect()
COLUMN = UTCDateTime()
STORE = COLUMN.dialect_impl(DIALECT).bind_processor(DIALECT)


def typed(value: datetime) -> str:
    # the column's own bind processor: UTCDateTime's conversion, then SQLite DATETIME's
    assert STORE is not None
    return str(STORE(value))


@given(
    st.datetimes(
        min_value=datetime(1000, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
        ),
    )
)
def test_agrees_with_the_typed_column(value: datetime) -> None:
    assert sqlite_utc_text(value) == typed(value)


def test_whole_seconds_keep_their_microseconds_field() -> None:
    value = datetime(2026, 11, 23, 9, 0, 0, tzinfo=UTC)
    assert sqlite_utc_text(value) == "2026-11-23 09:00:00.000000" == typed(value)


def test_kept_conversions_serve_the_same_instant_in_any_zone() -> None:
    utc = datetime(2026, 11, 30, 12, 0, 0, 5, tzinfo=UTC)
    oslo = utc.astimezone(timezone(timedelta(hours=1)))
    assert sqlite_utc_text(utc) == sqlite_utc_text(oslo) == "2026-11-30 12:00:00.000005"
    for i in range(200):  # past the cache's bound, which then starts over
        later = utc + timedelta(seconds=i)
        assert sqlite_utc_text(later) == typed(later)
    with pytest.raises(ValueError, match="naive"):
        sqlite_utc_text(utc.replace(tzinfo=None))  # not the aware value kept for that time


def test_none_and_naive() -> None:
    assert sqlite_utc_text(None) is None
    with pytest.raises(ValueError, match="naive"):
        sqlite_utc_text(datetime(2026, 1, 1))


# --- the write queue shared by processes ------------------------------------------------------


def test_writers_of_different_engines_queue_on_the_lock_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two engines stand for two processes (each has its own thread lock and lock-file handle).
    settings = make_settings(f"sqlite:///{tmp_path / 'bridge.db'}")
    first, second = create_db_engine(settings), create_db_engine(settings)
    with first.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (v INTEGER)")
    order: list[str] = []
    started = threading.Event()

    def other_writer() -> None:
        started.set()
        with second.begin() as conn:
            order.append("second begins")
            conn.exec_driver_sql("INSERT INTO t VALUES (2)")

    with first.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        thread = threading.Thread(target=other_writer)
        thread.start()
        assert started.wait(5)
        time.sleep(0.2)  # the other writer is waiting, not failing or writing
        order.append("first commits")
    thread.join(10)
    assert order == ["first commits", "second begins"]
    assert (tmp_path / "bridge.db.writelock").exists()
    # a writer that cannot get the lock in time fails instead of waiting forever
    monkeypatch.setattr(db_module, "WRITE_LOCK_TIMEOUT", 0.2)
    holder = os.open(tmp_path / "bridge.db.writelock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with pytest.raises(OperationalError, match="database busy"), second.begin():
            pass
    finally:
        os.close(holder)
    with second.begin() as conn:  # and the lock was given back after the failure
        conn.exec_driver_sql("INSERT INTO t VALUES (3)")
    first.dispose()
    second.dispose()


def test_a_write_lock_held_by_another_process_is_noticed(tmp_path: Path) -> None:
    """The worker paces itself by this (``app.worker.runner``): only an acquire that found
    the lock file held elsewhere counts, not one that got it at once."""
    engine = create_db_engine(make_settings(f"sqlite:///{tmp_path / 'b.db'}"))
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (v INTEGER)")
    assert db_module.write_lock_contended_at(engine) == 0.0  # free every time so far
    holder = os.open(tmp_path / "b.db.writelock", os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another process's writer, as the kernel sees it
    threading.Timer(0.2, os.close, args=(holder,)).start()
    before = time.monotonic()
    with engine.begin() as conn:  # waits for the holder, then writes
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    noticed = db_module.write_lock_contended_at(engine)
    assert before <= noticed <= before + 0.15  # when it found the lock held, not when it got it
    with engine.begin() as conn:  # free again: the time of the last contention stays
        conn.exec_driver_sql("INSERT INTO t VALUES (2)")
    assert db_module.write_lock_contended_at(engine) == noticed
    engine.dispose()
    memory = create_db_engine(make_settings("sqlite://"))  # no lock file: never contended
    with memory.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (v INTEGER)")
    assert db_module.write_lock_contended_at(memory) == 0.0
    memory.dispose()


def test_any_sqlite_driver_url_gets_the_lock_file_and_dispose_closes_it(tmp_path: Path) -> None:
    engine = create_db_engine(make_settings(f"sqlite+pysqlite:///{tmp_path / 'b.db'}"))
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (v INTEGER)")
    lock = tmp_path / "b.db.writelock"
    assert lock.exists()
    open_fds = {os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")}
    assert str(lock) in open_fds
    engine.dispose()
    open_fds = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            open_fds.add(os.path.realpath(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    assert str(lock) not in open_fds
    with engine.begin() as conn:  # usable after dispose: the lock file is opened again
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    engine.dispose()


def test_a_failed_begin_comes_out_as_sqlalchemys_error(tmp_path: Path) -> None:
    """BEGIN runs on the driver; a driver error there is still SQLAlchemy's OperationalError,
    which the writers and the worker classify (retry, unavailable)."""
    engine = create_db_engine(make_settings(database_url=f"sqlite:///{tmp_path / 'b.db'}"))
    try:
        with engine.connect() as conn:
            conn.connection.driver_connection.execute("BEGIN")  # a transaction left open
            with pytest.raises(OperationalError, match="within a transaction"):
                conn.begin()
            conn.connection.driver_connection.execute("ROLLBACK")
        with engine.begin() as conn:  # the write lock was given back
            conn.exec_driver_sql("CREATE TABLE t (v INTEGER)")
    finally:
        engine.dispose()


def test_unavailable_tells_a_database_that_cannot_write_from_a_fault() -> None:
    """What a worker waits out (and keeps its answers for) against what it must not retry."""
    import sqlite3

    import psycopg
    from sqlalchemy.exc import IntegrityError, InternalError

    assert db_module.unavailable(OperationalError("COMMIT", None, Exception("disk full")))
    assert db_module.unavailable(sqlite3.OperationalError("database is locked"))
    assert db_module.unavailable(psycopg.OperationalError("connection refused"))
    # A failover left the connection on a read-only standby.
    standby = psycopg.errors.ReadOnlySqlTransaction("cannot execute UPDATE")
    assert db_module.unavailable(InternalError("UPDATE", None, standby))
    assert not db_module.unavailable(IntegrityError("INSERT", None, Exception("unique")))
    assert not db_module.unavailable(ValueError("a fault in the code"))
