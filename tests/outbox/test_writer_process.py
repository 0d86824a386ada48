"""The writer process: the same group commit as the writer thread, in a child process. Real
child processes and sockets: durability before the answer, dedup, a child that dies (calls
refused, never lost; the child restarted), graceful stop, a child that cannot start, signals
meant for the API, and a child whose API process is gone."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import fields
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from app.config import Settings
from app.outbox import writer_process
from app.outbox.models import Delivery, InboundCall, State
from app.outbox.schemas import IdentityObservation, IngestRecord, IngestResult, NewDelivery
from app.outbox.writer import WriterUnavailable
from app.outbox.writer_process import (
    ProcessWriter,
    _frame,
    _split_frames,
    from_wire,
    run_writer,
    to_wire,
)
from tests.conftest import make_settings
from tests.outbox.test_writer import Commits, count, record

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def settings(database_url: str, db: Engine) -> Settings:
    return make_settings(database_url, ingest_writer="process")


@pytest.fixture
async def writer(settings: Settings) -> AsyncIterator[tuple[ProcessWriter, Commits]]:
    commits = Commits()
    w = ProcessWriter(settings, on_commit=commits)
    await w.start()
    yield w, commits
    await w.aclose()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


async def wait_until(predicate: object, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


async def test_calls_are_committed_by_the_child_before_they_resolve(
    writer: tuple[ProcessWriter, Commits], db: Engine
) -> None:
    w, commits = writer
    assert w.up
    assert w.pid is not None
    assert w.pid != os.getpid()
    results = await asyncio.gather(
        *(w.submit(record(f"u{i}@x.io", key=f"k{i}")) for i in range(50))
    )
    assert all(not r.duplicate and len(r.delivery_ids) == 1 for r in results)
    ids = {r.delivery_ids[0] for r in results}
    with db.connect() as conn:
        stored = set(conn.execute(select(Delivery.id)).scalars())
    assert stored == ids
    # concurrent calls shared commits, and the embedded worker was woken after them
    assert 1 <= commits.count < 50


async def test_duplicates_are_recognised_across_calls(
    writer: tuple[ProcessWriter, Commits], db: Engine
) -> None:
    w, _ = writer
    first = await w.submit(record("a@x.io", key="same"))
    again = await w.submit(record("a@x.io", key="same"))
    assert again.duplicate
    assert again.delivery_ids == first.delivery_ids
    assert count(db, Delivery) == 1


async def test_a_bad_record_fails_alone(writer: tuple[ProcessWriter, Commits], db: Engine) -> None:
    w, _ = writer
    good = [record(f"g{i}@x.io") for i in range(5)]
    bad = record("bad@x.io", body=None)  # NOT NULL violation inside the child
    outcomes = await asyncio.gather(*(w.submit(r) for r in [*good, bad]), return_exceptions=True)
    assert all(isinstance(o, IngestResult) for o in outcomes[:5])
    assert isinstance(outcomes[5], WriterUnavailable)
    assert count(db, Delivery) == 5


async def test_a_dead_child_refuses_calls_then_comes_back(
    writer: tuple[ProcessWriter, Commits], db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    w, _ = writer
    await w.submit(record("before@x.io"))
    old = w.pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    await wait_until(lambda: not w.up)
    with pytest.raises(WriterUnavailable):
        await w.submit(record("during@x.io"))  # a 503 for the caller, never a lost 200
    await wait_until(lambda: w.up)
    assert w.pid != old
    assert not alive(old)
    result = await w.submit(record("after@x.io"))
    assert result.delivery_ids
    with db.connect() as conn:
        emails = set(conn.execute(select(Delivery.email)).scalars())
    assert emails == {"before@x.io", "after@x.io"}


async def test_close_commits_and_answers_everything_sent(settings: Settings, db: Engine) -> None:
    w = ProcessWriter(settings)
    await w.start()
    pid = w.pid
    assert pid is not None
    tasks = [asyncio.ensure_future(w.submit(record(f"s{i}@x.io"))) for i in range(200)]
    await asyncio.sleep(0)  # every submit() is queued; none is answered yet
    await w.aclose()
    results = await asyncio.gather(*tasks)
    assert count(db, Delivery) == 200 == len({r.delivery_ids[0] for r in results})
    assert not alive(pid)
    assert not w.up
    with pytest.raises(WriterUnavailable):
        await w.submit(record("late@x.io"))


async def test_signals_for_the_api_do_not_stop_the_child(
    writer: tuple[ProcessWriter, Commits],
) -> None:
    # Ctrl-C and systemd signal the whole process group; the API decides when the child stops.
    w, _ = writer
    assert w.pid is not None
    os.kill(w.pid, signal.SIGINT)
    os.kill(w.pid, signal.SIGTERM)
    await asyncio.sleep(0.3)
    assert alive(w.pid)
    assert w.up
    assert (await w.submit(record("still@x.io"))).delivery_ids


async def test_a_child_that_cannot_open_the_database_fails_the_start(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    settings = make_settings(f"sqlite:///{blocker}/sub/bridge.db", ingest_writer="process")
    w = ProcessWriter(settings)
    with pytest.raises(WriterUnavailable, match="did not start"):
        await w.start()
    assert not w.up


def test_the_child_commits_what_it_read_when_the_api_goes_away(
    settings: Settings, db: Engine
) -> None:
    # The API process died (its end of the socket closed) after sending two calls: the child
    # commits them, cannot answer, and exits instead of lingering as an orphan.
    api, child = socket.socketpair()
    thread = threading.Thread(target=run_writer, args=(child, settings))
    thread.start()
    buf = bytearray()
    while not buf:
        buf += api.recv(65536)
    assert _split_frames(buf)[0][0] == "ready"
    api.sendall(_frame([(1, to_wire(record("x@x.io"))), (2, to_wire(record("y@x.io")))]))
    api.sendall(_frame([(3, to_wire(record("z@x.io")))])[:10])  # cut off mid-frame
    api.close()
    thread.join(20)
    assert not thread.is_alive()
    assert count(db, InboundCall) == 2
    assert count(db, Delivery) == 2


def test_frames_split_only_when_complete() -> None:
    data = _frame(["a"]) + _frame({"b": 1})
    buf = bytearray(data[:-1])
    assert _split_frames(buf) == [["a"]]
    buf += data[-1:]
    assert _split_frames(buf) == [{"b": 1}]
    assert buf == bytearray()


def test_records_cross_the_wire_unchanged() -> None:
    rec = record("a@x.io", "b@x.io", key="k", clevertap_id="__c")
    rec.content_type, rec.reason, rec.request_id, rec.skipped = "application/json", "r", "q", 2
    rec.body_truncated = True
    rec.deliveries[0].identity_policy = "park"
    rec.deliveries[0].park_until = rec.received_at
    rec.deliveries[1].state = State.DROPPED
    rec.deliveries[1].reason = "why"
    wire = to_wire(rec)
    # every field of the dataclasses is on the wire (a new field must be added there too)
    assert len(wire) == len(fields(IngestRecord))
    assert len(wire[-2][0]) == len(fields(NewDelivery))
    assert len(wire[-1][0]) == len(fields(IdentityObservation))
    assert from_wire(_split_frames(bytearray(_frame(wire)))[0]) == rec


# --- a child's life: the failure paths ----------------------------------------------------------


def ready_then_die(sock: socket.socket, settings: Settings) -> None:
    """A child that says ready and exits at once (spawned by name, so it lives at module level)."""
    sock.sendall(_frame(("ready", os.getpid())))
    os._exit(0)


async def test_a_child_that_dies_right_after_ready_is_not_taken_for_a_live_one(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_process, "_child_main", ready_then_die)
    real = writer_process._Link.data_received

    def busy_loop(self: writer_process._Link, data: bytes) -> None:
        time.sleep(0.3)  # the event loop is busy: the child's exit is seen before "ready" is
        real(self, data)

    monkeypatch.setattr(writer_process._Link, "data_received", busy_loop)
    w = ProcessWriter(settings)
    with pytest.raises(WriterUnavailable, match="exited right after starting"):
        await w.start()
    assert not w.up


async def test_close_while_the_child_is_being_restarted(settings: Settings) -> None:
    w = ProcessWriter(settings)
    await w.start()
    assert w.pid is not None
    os.kill(w.pid, signal.SIGKILL)
    await wait_until(lambda: not w.up)
    await w.aclose()  # the restart is cancelled; nothing is left running
    assert not w.up
    with pytest.raises(WriterUnavailable):
        await w.submit(record("late@x.io"))


async def test_a_failed_restart_is_retried(
    writer: tuple[ProcessWriter, Commits], monkeypatch: pytest.MonkeyPatch
) -> None:
    w, _ = writer
    real = socket.socketpair
    failures = iter([OSError(24, "Too many open files")])

    def socketpair() -> tuple[socket.socket, socket.socket]:
        for exc in failures:
            raise exc
        return real()

    monkeypatch.setattr(socket, "socketpair", socketpair)
    assert w.pid is not None
    os.kill(w.pid, signal.SIGKILL)
    await wait_until(lambda: not w.up)
    await wait_until(lambda: w.up, within=30)  # the second attempt (after 0.5 + 1 s) works
    assert (await w.submit(record("back@x.io"))).delivery_ids


def full_disk_child(sock: socket.socket, settings: Settings) -> None:
    """The real child, on a database that is full (SQLite's max_page_count: SQLITE_FULL)."""
    from sqlalchemy import event

    from app import db as app_db

    real = app_db.create_db_engine

    def full_engine(s: Settings, *, in_serve: bool = False) -> Engine:
        engine = real(s, in_serve=in_serve)

        @event.listens_for(engine, "connect")
        def full(dbapi_conn: object, _record: object) -> None:
            cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
            pages = cur.execute("PRAGMA page_count").fetchone()[0]
            cur.execute(f"PRAGMA max_page_count = {pages}")
            cur.close()

        return engine

    app_db.create_db_engine = full_engine  # type: ignore[assignment]
    run_writer(sock, settings)


async def test_a_child_that_cannot_commit_makes_the_writer_unhealthy(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not settings.is_sqlite:
        pytest.skip("SQLite's max_page_count stands in for a full disk")
    monkeypatch.setattr(writer_process, "_child_main", full_disk_child)
    w = ProcessWriter(settings)
    await w.start()
    try:
        assert w.up
        assert w.health.error is None
        with pytest.raises(WriterUnavailable, match="full"):
            await w.submit(record("big@x.io", body="x" * 20_000))
        # Up (the child lives) but unable to commit: readiness must not say ready.
        assert w.up
        assert w.health.error is not None
        assert "full" in w.health.error
    finally:
        await w.aclose()
