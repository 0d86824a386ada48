"""WAL checkpoints off the ingest path (``app.checkpoint``): what each process's engine does
in a commit, the wal-index reading, copying when ingest is quiet (not during a burst), the
bound under sustained writes, and the writer process's thread on a real child."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from app.checkpoint import Checkpointer
from app.db import WAL_CAP_FRAMES, create_db_engine, holding_write_lock
from app.outbox.writer_process import ProcessWriter
from app.system.migrations import upgrade
from tests.conftest import make_settings
from tests.outbox.test_writer import record


def wal_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (x)")
    return conn


def write(conn: sqlite3.Connection, rows: int) -> None:
    for _ in range(rows):
        conn.execute("INSERT INTO t VALUES (randomblob(3000))")


def until(predicate: object, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


@pytest.mark.parametrize(
    ("writer", "in_serve", "pages"),
    [
        ("process", True, 0),  # serve's own processes: never inside a commit
        ("process", False, WAL_CAP_FRAMES),  # the CLI beside serve: only past the bound
        ("thread", True, 1000),  # no writer process, no checkpointer: SQLite's default
    ],
)
def test_each_engine_checkpoints_in_a_commit_only_as_its_place_allows(
    tmp_path: Path, writer: str, in_serve: bool, pages: int
) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'b.db'}", ingest_writer=writer)
    engine = create_db_engine(settings, in_serve=in_serve)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA wal_autocheckpoint")).scalar_one() == pages
    finally:
        engine.dispose()


def test_the_wal_size_is_read_from_the_wal_index(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    checkpointer = Checkpointer(path, "FULL")
    assert checkpointer.wal_frames() == (0, 0)  # no WAL yet
    conn = wal_db(path)
    write(conn, 40)
    frames, copied = checkpointer.wal_frames()
    assert frames >= 40
    assert copied == 0
    busy, log_frames, checkpointed = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert (busy, log_frames, checkpointed) == (0, frames, frames)
    assert checkpointer.wal_frames() == (frames, frames)
    write(conn, 1)  # everything was copied: this write starts the WAL over
    assert checkpointer.wal_frames()[0] < 5
    conn.close()
    checkpointer.release_index()


def shm_descriptors(path: Path) -> int:
    shm = f"{path}-shm"
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == shm)


def test_holding_the_write_lock_makes_the_bridge_writers_wait(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'l.db'}", ingest_writer="process")
    engine = create_db_engine(settings, in_serve=True)
    done = threading.Event()

    def write_something() -> None:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE IF NOT EXISTS x (a)"))
        done.set()

    try:
        with holding_write_lock(engine):
            writer = threading.Thread(target=write_something)
            writer.start()
            assert not done.wait(0.3), "a writer got in while the lock was held"
        assert done.wait(10)
        writer.join()
    finally:
        engine.dispose()


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc")
def test_the_wal_index_is_read_on_one_descriptor_never_closed_under_sqlite(tmp_path: Path) -> None:
    """Closing any descriptor of the -shm file would drop every POSIX lock this process holds
    on it, the SQLite connections' included (howtocorrupt.html): it is opened once, and closed
    only by ``release_index`` after the last connection."""
    path = tmp_path / "fd.db"
    conn = wal_db(path)
    write(conn, 3)
    sqlite_own = shm_descriptors(path)
    checkpointer = Checkpointer(path, "FULL")
    for _ in range(20):
        checkpointer.wal_frames()
        checkpointer.catch_up()
    assert shm_descriptors(path) == sqlite_own + 1
    conn.close()
    checkpointer.release_index()
    assert shm_descriptors(path) == 0


def test_a_burst_stays_in_the_wal_and_is_copied_once_ingest_is_quiet(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    conn = wal_db(path)
    checkpointer = Checkpointer(path, "FULL", quiet_seconds=1.5, look_interval=0.02)
    checkpointer.start()
    try:
        busy_until = time.monotonic() + 0.6
        while time.monotonic() < busy_until:  # the writer commits all along
            write(conn, 5)
            checkpointer.committed()
            time.sleep(0.01)
        frames, copied = checkpointer.wal_frames()
        assert copied == 0, "nothing is copied during the burst"
        assert checkpointer.checkpoints == 0
        until(lambda: checkpointer.wal_frames() == (frames, frames))
        assert checkpointer.checkpoints >= 1
    finally:
        checkpointer.stop()
        conn.close()
        checkpointer.release_index()


def test_sustained_writes_beside_a_busy_reader_keep_the_wal_within_its_bound(
    tmp_path: Path,
) -> None:
    """The worker reads all the time: a copy that never waits for readers would leave a read
    open on old frames whenever the writer begins, and the WAL would never start over."""
    path = tmp_path / "s.db"
    conn = wal_db(path)
    cap = 200
    held = 0

    @contextlib.contextmanager
    def write_lock() -> Iterator[None]:
        nonlocal held
        held += 1
        yield

    checkpointer = Checkpointer(
        path, "FULL", cap_frames=cap, quiet_seconds=60, look_interval=0.01, write_lock=write_lock
    )
    checkpointer.start()
    stop = threading.Event()

    def read_all_the_time() -> None:
        reader = sqlite3.connect(path, isolation_level=None)
        while not stop.is_set():
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM t").fetchone()
            time.sleep(0.001)
            reader.execute("COMMIT")
        reader.close()

    worker = threading.Thread(target=read_all_the_time)
    worker.start()
    try:
        most = restarts = last = 0
        for _ in range(300):  # never quiet: only the bound makes it copy
            write(conn, 5)
            checkpointer.committed()
            checkpointer.catch_up()
            frames = checkpointer.wal_frames()[0]
            restarts += frames < last
            most, last = max(most, frames), frames
        assert checkpointer.checkpoints >= 1, "the thread copies from half the bound on"
        assert checkpointer.catch_ups >= 1
        # 1,500 rows written (~4,500 frames had the WAL never started over): it started over
        # again and again, near its bound (a catch-up waits a look interval after the last,
        # and skips while the thread copies, so a slow machine overshoots more: 801 seen).
        assert restarts >= 3
        assert most < 6 * cap
        assert held >= checkpointer.catch_ups  # every restart under the bridge's write lock
    finally:
        stop.set()
        worker.join()
        checkpointer.stop()
        conn.close()
        checkpointer.release_index()


def test_a_reader_that_holds_the_wal_does_not_make_every_batch_pay(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    conn = wal_db(path)
    write(conn, 1)
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM t").fetchone()  # pins a snapshot: frames after it stay
    checkpointer = Checkpointer(path, "FULL", cap_frames=20, quiet_seconds=60, look_interval=1)
    try:
        for _ in range(50):
            write(conn, 2)
            checkpointer.catch_up()
        assert checkpointer.catch_ups <= 2  # at most once per look interval, not per batch
    finally:
        reader.close()
        checkpointer.stop()
        conn.close()
        checkpointer.release_index()


async def test_the_writer_process_copies_the_wal_after_a_burst(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    settings = make_settings(url, ingest_writer="process")
    engine = create_db_engine(settings)
    upgrade(settings, engine)
    engine.dispose()
    writer = ProcessWriter(settings)
    await writer.start()
    probe = Checkpointer(tmp_path / "p.db", "FULL")
    try:
        await asyncio.gather(
            *(writer.submit(record(f"u{i}@x.io", key=f"k{i}")) for i in range(200))
        )
        frames, _ = probe.wal_frames()
        assert frames > 0
        deadline = time.monotonic() + 10
        while probe.wal_frames()[1] < probe.wal_frames()[0]:
            assert time.monotonic() < deadline, "the WAL was never copied"
            await asyncio.sleep(0.05)
    finally:
        await writer.aclose()
        probe.release_index()
