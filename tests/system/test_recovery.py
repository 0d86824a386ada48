"""Leases of gone workers come back at once (app/system/recovery.py), on SQLite and PostgreSQL:
a stale heartbeat, a dead process in our pid namespace, a reused pid, no heartbeat row at all;
a worker on another host or a slow but beating one keeps its rows, and a worker whose lease was
taken back cannot write its late answer over the new owner's."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from app.clock import ManualClock
from app.outbox import repository, transitions
from app.outbox.models import State, Upstream
from app.outbox.policy import RetryPolicy
from app.system import recovery
from app.system import repository as system_repo
from app.system.models import WorkerHeartbeat
from app.system.recovery import Me, Reclaimed
from app.upstream import AttemptOutcome, Outcome
from tests.factories import add_deliveries, add_heartbeat, get_delivery

HEARTBEAT = 5.0
WINDOW = recovery.gone_after(HEARTBEAT)  # 15 s
LEASE = timedelta(seconds=300)
HERE = recovery.pid_namespace()
ELSEWHERE = "another-boot-id/pid:[4026531836]"
ME = Me("sweeper", pid=os.getpid(), pid_namespace=HERE)


def leased(engine: Engine, worker_id: str, *emails: str, claimed_at: datetime) -> list[int]:
    """Pending rows leased by ``worker_id`` at ``claimed_at`` (as ``claim_due`` leaves them)."""
    return add_deliveries(
        engine,
        *emails,
        leased_by=worker_id,
        lease_token=f"token-{worker_id}",
        updated_at=claimed_at,
        next_attempt_at=claimed_at + LEASE,
    )


def sweep(engine: Engine, now: datetime, me: Me = ME, **kw: object) -> Reclaimed:
    with engine.begin() as conn:
        return recovery.reclaim_from_gone_workers(
            conn,
            me=me,
            now=now,
            stale_after=WINDOW,
            **kw,  # type: ignore[arg-type]
        )


def is_back(engine: Engine, delivery_id: int, now: datetime) -> bool:
    """Due now, unleased, pending, and no attempt used."""
    row = get_delivery(engine, delivery_id)
    return (row.state, row.lease_token, row.leased_by, row.attempts, row.next_attempt_at) == (
        State.PENDING,
        None,
        None,
        0,
        now,
    )


def still_leased(engine: Engine, delivery_id: int, worker_id: str) -> bool:
    row = get_delivery(engine, delivery_id)
    return (row.leased_by, row.lease_token) == (worker_id, f"token-{worker_id}")


def workers(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(WorkerHeartbeat.worker_id)).scalars())


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(proc.stdout)


def test_stale_heartbeat_is_gone_after_the_window(db: Engine, clock: ManualClock) -> None:
    now = clock.freeze()
    add_heartbeat(db, "w-stale", beat_at=now - WINDOW - timedelta(seconds=1))
    add_heartbeat(db, "w-late", beat_at=now - WINDOW + timedelta(seconds=1))
    stale = leased(db, "w-stale", "a@example.com", "b@example.com", claimed_at=now - LEASE / 2)
    [late] = leased(db, "w-late", "c@example.com", claimed_at=now - LEASE / 2)

    found = sweep(db, now)

    assert found.rows == 2
    assert list(found.gone) == ["w-stale"]
    assert "no heartbeat for 16 s" in found.gone["w-stale"]
    assert all(is_back(db, i, now) for i in stale)
    assert still_leased(db, late, "w-late")  # a late beat or two is no proof of death
    assert workers(db) == {"w-late"}  # the gone worker's row is removed
    assert sweep(db, now) == Reclaimed({}, 0)  # nothing left: a second sweep is a no-op


@pytest.mark.skipif(HERE is None, reason="needs /proc (Linux)")
def test_dead_process_in_our_pid_namespace_is_gone_at_once(db: Engine, clock: ManualClock) -> None:
    now = clock.freeze()
    pid = dead_pid()
    add_heartbeat(db, "w-crashed", pid=pid, pid_namespace=HERE, started_at=now - LEASE)
    ids = leased(db, "w-crashed", "a@example.com", claimed_at=now - timedelta(seconds=1))

    found = sweep(db, now)  # the heartbeat is fresh: only the process check tells

    assert found.gone == {"w-crashed": f"its process {pid} has exited"}
    assert is_back(db, ids[0], now)
    assert workers(db) == set()


@pytest.mark.skipif(HERE is None, reason="needs /proc (Linux)")
def test_our_own_pid_under_another_worker_id_is_a_restart(db: Engine, clock: ManualClock) -> None:
    """A restarted container often gets the old pid back (pid 1): the pid is alive, but it is
    us, so the worker that had it is dead."""
    now = clock.freeze()
    add_heartbeat(db, "w-before-restart", pid=os.getpid(), pid_namespace=HERE)
    ids = leased(db, "w-before-restart", "a@example.com", claimed_at=now)

    found = sweep(db, now)

    assert list(found.gone) == ["w-before-restart"]
    assert "it was restarted" in found.gone["w-before-restart"]
    assert is_back(db, ids[0], now)


@pytest.mark.skipif(HERE is None, reason="needs /proc (Linux)")
def test_pid_reused_by_a_newer_process_is_gone(db: Engine, clock: ManualClock) -> None:
    now = clock.freeze()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        real_now = datetime.now(UTC)
        # The worker "started" an hour before the process that has its pid now: reused.
        add_heartbeat(
            db, "w-old", pid=other.pid, pid_namespace=HERE, started_at=real_now - timedelta(hours=1)
        )
        # This one started after its process did: it is that process, alive.
        add_heartbeat(db, "w-alive", pid=other.pid, pid_namespace=HERE, started_at=real_now)
        [old] = leased(db, "w-old", "a@example.com", claimed_at=now)
        [alive] = leased(db, "w-alive", "b@example.com", claimed_at=now)

        found = sweep(db, now)
    finally:
        other.kill()
        other.wait()

    assert list(found.gone) == ["w-old"]
    assert is_back(db, old, now)
    assert still_leased(db, alive, "w-alive")


def test_another_host_with_a_fresh_heartbeat_keeps_its_rows(db: Engine, clock: ManualClock) -> None:
    """A pid means nothing in another pid namespace (another host, another container): only
    the heartbeat's age can tell, and it is fresh."""
    now = clock.freeze()
    add_heartbeat(db, "w-remote", pid=dead_pid(), pid_namespace=ELSEWHERE)
    add_heartbeat(db, "w-unknown-ns", pid=os.getpid(), pid_namespace=None)
    [remote] = leased(db, "w-remote", "a@example.com", claimed_at=now - LEASE / 2)
    [unknown] = leased(db, "w-unknown-ns", "b@example.com", claimed_at=now - LEASE / 2)

    assert sweep(db, now, alive=lambda pid, started: pytest.fail("no process check")) == (
        Reclaimed({}, 0)
    )
    assert still_leased(db, remote, "w-remote")
    assert still_leased(db, unknown, "w-unknown-ns")
    assert workers(db) == {"w-remote", "w-unknown-ns"}

    # ... until it stops beating.
    clock.advance(WINDOW.total_seconds() + 1)
    assert set(sweep(db, clock.now()).gone) == {"w-remote", "w-unknown-ns"}
    assert is_back(db, remote, clock.now())


def test_rows_of_a_worker_with_no_heartbeat_row_come_back_after_the_window(
    db: Engine, clock: ManualClock
) -> None:
    now = clock.freeze()
    [old] = leased(db, "w-ghost", "a@example.com", claimed_at=now - WINDOW - timedelta(seconds=1))
    [young] = leased(db, "w-newborn", "b@example.com", claimed_at=now - timedelta(seconds=1))

    found = sweep(db, now)

    assert list(found.gone) == ["w-ghost"]
    assert found.rows == 1
    assert is_back(db, old, now)
    # A worker that claimed before its first beat was written is not robbed.
    assert still_leased(db, young, "w-newborn")


def test_slow_but_beating_worker_is_never_robbed(db: Engine, clock: ManualClock) -> None:
    """Its calls may take longer than any window: a fresh heartbeat keeps its leases (the
    lease itself, not the sweep, bounds how long a row may stay out)."""
    now = clock.freeze()
    add_heartbeat(db, "w-slow", beat_at=now - timedelta(seconds=HEARTBEAT), pid=os.getpid() + 1)
    ids = leased(db, "w-slow", "a@example.com", claimed_at=now - LEASE + timedelta(seconds=1))
    mine = leased(db, ME.worker_id, "b@example.com", claimed_at=now - LEASE / 2)

    assert sweep(db, now) == Reclaimed({}, 0)
    assert still_leased(db, ids[0], "w-slow")
    assert still_leased(db, mine[0], ME.worker_id)  # nor does the sweeper rob itself


def test_a_worker_that_beat_meanwhile_is_not_forgotten(db: Engine, clock: ManualClock) -> None:
    """The heartbeat row goes only if its ``beat_at`` is the one read; two sweepers at once:
    one removes it, the other finds it gone."""
    now = clock.freeze()
    add_heartbeat(db, "w", beat_at=now)
    with db.begin() as conn:
        assert not system_repo.forget_gone_worker(conn, "w", now - timedelta(seconds=1))
    assert workers(db) == {"w"}
    with db.begin() as conn:
        assert system_repo.forget_gone_worker(conn, "w", now)
    with db.begin() as conn:
        assert not system_repo.forget_gone_worker(conn, "w", now)


def test_late_answer_of_a_robbed_worker_is_not_written(db: Engine, clock: ManualClock) -> None:
    """Lease-token fencing: A's rows are taken back, B claims and delivers them, then A's late
    answer (a retry) changes nothing."""
    policy = RetryPolicy([1, 2], pause_probe_seconds=60)
    ids = add_deliveries(db, "a@example.com")
    start = clock.freeze()
    add_heartbeat(db, "w-a", beat_at=start)
    with db.begin() as conn:
        [by_a] = repository.claim_due(
            conn,
            upstream=Upstream.MAILMODO,
            limit=10,
            now=start,
            lease_seconds=300,
            worker_id="w-a",
        )
    clock.advance(WINDOW.total_seconds() + 1)  # A stops beating (a long pause, a partition)
    now = clock.now()
    assert sweep(db, now, me=Me("w-b", pid=os.getpid(), pid_namespace=HERE)).rows == 1
    with db.begin() as conn:
        [by_b] = repository.claim_due(
            conn, upstream=Upstream.MAILMODO, limit=10, now=now, lease_seconds=300, worker_id="w-b"
        )
        delivered = Outcome(
            AttemptOutcome.DELIVERED, status_code=200, reason=None, ref="ref-b", duration_ms=1
        )
        change = transitions.after_attempt(by_b, delivered, now, policy)
        assert repository.update_leased(conn, by_b, change)
    assert by_b.id == by_a.id == ids[0]
    assert by_b.lease_token != by_a.lease_token
    assert by_b.attempts == 0  # taking the row back used no attempt

    late = Outcome(AttemptOutcome.RETRY, status_code=503, reason="late", duration_ms=1)
    with db.begin() as conn:
        change = transitions.after_attempt(by_a, late, clock.now(), policy)
        assert repository.update_leased(conn, by_a, change) is False
        assert repository.finish_many(conn, [(by_a, change)]) == 0
        assert not repository.update_leased(conn, by_a, transitions.release_lease(clock.now()))
    row = get_delivery(db, ids[0])
    assert (row.state, row.upstream_ref, row.attempts, row.leased_by) == (
        State.DELIVERED,
        "ref-b",
        1,
        None,
    )


# --- the process check itself --------------------------------------------------------------------

pytestmark_linux = pytest.mark.skipif(HERE is None, reason="needs /proc (Linux)")


@pytestmark_linux
def test_process_alive() -> None:
    me = os.getpid()
    assert recovery.process_alive(me, datetime.now(UTC))
    assert not recovery.process_alive(me, datetime.now(UTC) - timedelta(days=365))  # reused
    assert not recovery.process_alive(dead_pid(), datetime.now(UTC))
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
        assert not recovery.process_alive(child.pid, datetime.now(UTC))
    finally:
        child.wait()


@pytestmark_linux
def test_pid_namespace_is_stable_and_shared_by_children() -> None:
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "from app.system.recovery import pid_namespace; print(pid_namespace())",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    assert recovery.pid_namespace() == HERE == child.stdout.strip()
    assert HERE is not None
    assert HERE.count("/") == 1
