"""serve's embedded worker as a child process (app/worker/process.py), with real processes:
it runs beside the API at a lower priority, an ingest commit wakes it at once, it is started
again after it dies (readiness says so meanwhile), and a SIGTERM of serve stops it within the
grace period. (A SIGKILL of serve leaving no orphan: tests/test_e2e_restart.py.)"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.state import BridgeState
from app.worker import process
from app.worker.process import WorkerProcess
from tests.factories import add_heartbeat
from tests.test_e2e_restart import Bridge, FakeMailmodo, running, wait_for


def worker_pids(db: Path) -> set[int]:
    with sqlite3.connect(db) as conn:
        return {pid for (pid,) in conn.execute("SELECT pid FROM worker_heartbeats")}


def nice_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def yields_to(pid: int, other: int) -> bool:
    """``pid`` gets a contended core only after ``other``: SCHED_IDLE, or a higher nice."""
    if os.sched_getscheduler(pid) == os.SCHED_IDLE:
        return os.sched_getscheduler(other) != os.SCHED_IDLE
    return nice_of(pid) > nice_of(other)


@pytest.fixture
def fake_mailmodo() -> Iterator[FakeMailmodo]:
    fake = FakeMailmodo()
    yield fake
    fake.close()


@pytest.fixture
def bridge(tmp_path: Path, fake_mailmodo: FakeMailmodo) -> Iterator[Bridge]:
    b = Bridge(tmp_path, fake_mailmodo.url)
    # A poll far longer than the test: only the wake-up from the API can get calls out soon.
    b.env |= {"BRIDGE_WORKER_POLL_SECONDS": "60", "BRIDGE_SHUTDOWN_GRACE_SECONDS": "2"}
    yield b
    if b.proc is not None:
        b.proc.kill()
        b.proc.wait()


def test_the_worker_process_is_woken_restarted_and_reported(
    bridge: Bridge, fake_mailmodo: FakeMailmodo, tmp_path: Path
) -> None:
    fake_mailmodo.delay = 0.0
    db = tmp_path / "bridge.db"
    bridge.start()
    assert bridge.proc is not None
    with httpx.Client(timeout=10) as client:
        wait_for(lambda: client.get(f"{bridge.url}/readyz").status_code == 200, 20, "ready")
        [pid] = worker_pids(db)
        assert pid != bridge.proc.pid
        assert yields_to(pid, bridge.proc.pid)  # ingest wins a contended core

        # Woken by the commit, not by the (60 s) poll.
        began = time.monotonic()
        assert bridge.post(client, "first@example.com").status_code == 200
        wait_for(lambda: "first@example.com" in fake_mailmodo.received, 5, "a prompt delivery")
        assert time.monotonic() - began < 3

        # The worker dies: a new one starts and delivers.
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not running(pid), 10, "the worker to die")
        wait_for(lambda: worker_pids(db) - {pid}, 20, "a new worker process")
        [new_pid] = worker_pids(db) - {pid}
        assert bridge.post(client, "second@example.com").status_code == 200
        wait_for(
            lambda: "second@example.com" in fake_mailmodo.received, 10, "delivery after restart"
        )
        wait_for(lambda: client.get(f"{bridge.url}/readyz").status_code == 200, 20, "ready again")
    assert running(new_pid)
    assert "worker process died; restarting it" in bridge.log.read_text()


def test_sigterm_stops_the_worker_within_the_grace_period(
    bridge: Bridge, fake_mailmodo: FakeMailmodo, tmp_path: Path
) -> None:
    fake_mailmodo.delay = 8.0  # a call in flight that will not finish within the grace
    db = tmp_path / "bridge.db"
    bridge.start()
    with httpx.Client(timeout=10) as client:
        wait_for(lambda: bool(worker_pids(db)), 20, "the worker to beat")
        [pid] = worker_pids(db)
        assert bridge.post(client, "slow@example.com").status_code == 200
        time.sleep(0.5)  # the call is in flight
    assert bridge.proc is not None
    began = time.monotonic()
    bridge.stop(signal.SIGTERM)
    took = time.monotonic() - began
    assert took < 2 + 2.5  # the grace (2 s) and a margin, not the 8 s call
    assert not running(pid)
    with sqlite3.connect(db) as conn:
        state, leased_by = conn.execute("SELECT state, leased_by FROM deliveries").fetchone()
    assert (state, leased_by) == ("pending", None)  # given back unsent, for the next start


async def test_readiness_reports_a_worker_process_that_is_down(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    add_heartbeat(state.engine, "w-1")  # a fresh beat is not enough while the child is down
    assert (await client.get("/readyz")).status_code == 200
    state.runner = WorkerProcess(state.settings)  # not started: no child up
    answer = await client.get("/readyz")
    assert answer.status_code == 503
    worker = answer.json()["checks"]["worker"]
    assert (worker["ok"], worker["process"]) == (False, "down")


class _Transport:
    """The API's end of the child's socket: when each wake-up byte was written."""

    def __init__(self) -> None:
        self.writes: list[float] = []

    def write(self, data: bytes) -> None:
        assert data == b"w"
        self.writes.append(time.monotonic())

    def is_closing(self) -> bool:
        return False


async def test_commits_wake_the_child_at_once_then_at_most_once_an_interval(
    state: BridgeState,
) -> None:
    """A flood's ~500 commits a second become one wake-up per ``WAKE_INTERVAL_SECONDS``: the
    first commit's at once (an idle worker hears of it without delay), the last one's at the
    end of its interval (never dropped)."""
    worker = WorkerProcess(state.settings)
    worker._loop = asyncio.get_running_loop()
    link = worker._link = process._ParentLink()
    transport = link.transport = _Transport()  # type: ignore[assignment]
    interval = process.WAKE_INTERVAL_SECONDS

    worker.wake_threadsafe()  # on the loop, as the process writer calls it
    await asyncio.sleep(0)
    assert len(transport.writes) == 1  # the first at once

    # Commits come in bursts (several per loop turn, as the writer's batches commit) for at
    # least five intervals; how many loop turns fit in that depends on the machine, so the
    # count is not asserted, only that bursts became far fewer wake-ups.
    first = time.monotonic()
    commits = 0
    while time.monotonic() - first < 5 * interval:
        for _ in range(4):
            worker.wake_threadsafe()
            commits += 1
        last_commit = time.monotonic()
        await asyncio.sleep(interval / 20)
    last = time.monotonic()
    await asyncio.sleep(2 * interval)
    sent = transport.writes[1:]
    assert len(sent) <= commits / 4
    assert 1 <= len(sent) <= (last - first) / interval + 2
    assert all(b - a >= interval * 0.99 for a, b in itertools.pairwise(transport.writes))
    # The last commits' wake-up came after them (it may come during the loop's last sleep,
    # before ``last`` is read: comparing with ``last`` failed by microseconds).
    assert sent[-1] >= last_commit

    # From another thread (the writer thread of BRIDGE_INGEST_WRITER=thread): the same.
    await asyncio.sleep(interval)
    before = len(transport.writes)
    await asyncio.to_thread(worker.wake_threadsafe)
    await asyncio.sleep(interval / 2)
    assert len(transport.writes) == before + 1


def test_lower_priority_prefers_sched_idle_and_falls_back_to_nice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[object] = []
    monkeypatch.setattr(os, "sched_setscheduler", lambda *a: calls.append(("sched", a[1])))
    monkeypatch.setattr(os, "nice", lambda n: calls.append(("nice", n)))
    assert process.lower_priority() == "sched_idle"
    assert calls == [("sched", os.SCHED_IDLE)]

    def refused(*_: object) -> None:
        raise PermissionError("not allowed")

    calls.clear()
    monkeypatch.setattr(os, "sched_setscheduler", refused)
    assert process.lower_priority() == f"nice {process.WORKER_NICE}"
    assert calls == [("nice", process.WORKER_NICE)]
    monkeypatch.setattr(os, "nice", refused)
    assert process.lower_priority() == "unchanged"


def test_the_child_processes_load_neither_the_web_framework_nor_the_postgresql_driver() -> None:
    """Every start of the worker and the ingest writer (and every restart after a crash) pays
    for what they import: on SQLite neither needs FastAPI, psycopg or the CLI. A spawned child
    also re-runs the parent's main file: under the ``ctmm-bridge`` console script, that
    script (as ``__mp_main__``), so its import must stay light too."""
    import subprocess
    import sys

    script = Path(sys.executable).with_name("ctmm-bridge")
    assert script.exists(), "the console script is installed with the project"
    code = (
        "import runpy, sys; "
        f"runpy.run_path({str(script)!r}, run_name='__mp_main__'); "
        "import app.worker.process, app.worker.build, app.outbox.writer_process, "
        "app.db, app.logging, app.runtime; "
        "print(sorted(m for m in ('fastapi', 'starlette', 'psycopg', 'typer', 'app.cli') "
        "if m in sys.modules))"
    )
    out = subprocess.run(  # noqa: S603 - our own interpreter, our own code
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


async def test_the_childs_counters_arrive_in_frames_however_the_bytes_are_cut() -> None:
    """The API end of the socket: the ready line, then counter frames split anywhere (the
    newest wins); bytes that are not a frame are dropped, never fatal."""
    link = process._ParentLink()
    frame = process.metrics_frame()
    stream = b"ready w-1\n" + frame + frame
    for i in range(0, len(stream), 7):  # 7-byte pieces: every boundary falls mid-frame
        link.data_received(stream[i : i + 7])
    assert link.ready.result() == "ready w-1"
    names = {family.name for family in link.families}
    assert "ctmm_bridge_upstream_attempts" in names
    assert all(name.startswith("ctmm_bridge_") for name in names)  # not process_* / python_*
    assert link.buf == b""
    link.data_received(b"garbage")
    assert link.buf == b""
    assert link.families  # the last good snapshot stays


def test_metrics_count_what_the_worker_process_delivered(
    bridge: Bridge, fake_mailmodo: FakeMailmodo
) -> None:
    """The deliveries happen in the child; /metrics, served by the API, shows them anyway."""
    fake_mailmodo.delay = 0.0
    bridge.start()
    with httpx.Client(timeout=10) as client:
        wait_for(lambda: client.get(f"{bridge.url}/readyz").status_code == 200, 20, "ready")
        for i in range(3):
            assert bridge.post(client, f"m{i}@example.com").status_code == 200

        def delivered() -> float:
            text = client.get(f"{bridge.url}/metrics").text
            families = list(text_string_to_metric_families(text))
            assert len(families) == len({f.name for f in families})
            return sum(
                s.value
                for f in families
                for s in f.samples
                if s.name == "ctmm_bridge_deliveries_total"
                and s.labels == {"upstream": "mailmodo", "outcome": "delivered"}
            )

        wait_for(lambda: delivered() == 3, 10, "three deliveries counted")
