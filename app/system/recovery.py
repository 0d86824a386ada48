"""Taking back the leases of workers that are gone, so a crash delays their rows by seconds,
not by ``BRIDGE_LEASE_SECONDS``.

A worker is gone when its heartbeat is older than ``GONE_AFTER_BEATS`` heartbeat intervals,
or — when it ran in this process's pid namespace (same kernel, same container) — when its
process no longer exists: its pid is ours (a restarted container often gets the old pid back),
it is not running, or the process with that pid started after the worker did (pid reuse).
Rows leased by a worker with no heartbeat row at all come back once their lease is as old as
that window. A worker with a fresh heartbeat keeps its leases however long its calls take;
should one be wrongly taken back anyway, the lease token keeps its late answer from being
written (``repository.update_leased``).

Every worker runs the sweep before its first claim and on each heartbeat, so after a crash the
rows come back at the restart (same pid namespace), else within
``(GONE_AFTER_BEATS + 1) * BRIDGE_HEARTBEAT_SECONDS`` while any worker runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from app.outbox import leases, transitions
from app.system import repository as system_repo
from app.system.repository import Executor, Heartbeat

#: Missed heartbeats after which a worker is gone (a beat waits behind other writers, so one
#: or two late beats are no proof of death).
GONE_AFTER_BEATS = 3
#: Slack between a process's start as the kernel tells it (``btime`` is whole seconds) and
#: the ``started_at`` its worker recorded.
_START_SLACK_SECONDS = 2.0

#: ``alive(pid, started_at)``: whether the worker that started at ``started_at`` as ``pid``
#: in this pid namespace still runs.
ProcessCheck = Callable[[int, datetime], bool]


def gone_after(heartbeat_seconds: float) -> timedelta:
    return timedelta(seconds=GONE_AFTER_BEATS * heartbeat_seconds)


def pid_namespace() -> str | None:
    """Where this process's pids mean something: the kernel's boot id and the pid namespace.

    Two workers with equal values see the same processes; None (no ``/proc``) turns the
    process check off and leaves the heartbeat's age alone to decide.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{boot}/{namespace}"[:96]


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


def process_alive(pid: int, started_at: datetime) -> bool:
    """Whether ``pid`` (in this pid namespace) is still the process that started a worker at
    ``started_at``: False when it does not exist, is a zombie, or started later (the pid was
    reused); True when it cannot be told (then only the heartbeat's age decides)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    # The command name, in parentheses, may hold spaces: fields are counted after it.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X", "x"):
        return False
    try:
        started = _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return True
    return started <= started_at.timestamp() + _START_SLACK_SECONDS


@dataclass(frozen=True, slots=True)
class Me:
    """The worker that sweeps: never gone to itself."""

    worker_id: str
    pid: int = field(default_factory=os.getpid)
    pid_namespace: str | None = field(default_factory=pid_namespace)


def why_gone(
    beat: Heartbeat, *, me: Me, now: datetime, stale_after: timedelta, alive: ProcessCheck
) -> str | None:
    """Why the worker of ``beat`` is gone, or None while it may be alive."""
    if beat.worker_id == me.worker_id:
        return None
    if beat.beat_at < now - stale_after:
        return f"no heartbeat for {(now - beat.beat_at).total_seconds():.0f} s"
    if me.pid_namespace is None or beat.pid_namespace != me.pid_namespace:
        return None
    if beat.pid == me.pid:
        return f"its pid {beat.pid} is now this worker's: it was restarted"
    if not alive(beat.pid, beat.started_at):
        return f"its process {beat.pid} has exited"
    return None


@dataclass(frozen=True, slots=True)
class Reclaimed:
    """What one sweep found: gone workers (id -> why) and the rows that came back."""

    gone: dict[str, str]
    rows: int


def reclaim_from_gone_workers(
    conn: Executor,
    *,
    me: Me,
    now: datetime,
    stale_after: timedelta,
    alive: ProcessCheck = process_alive,
) -> Reclaimed:
    """Forget gone workers and give their leased rows back to the due set (in the caller's
    transaction); also rows leased by a worker with no heartbeat row, once their lease is
    older than ``stale_after``. Safe to run from many workers at once: a heartbeat row is
    removed by one of them only, and only if its worker has not beaten meanwhile."""
    change = transitions.reclaim_lease(now)
    gone: dict[str, str] = {}
    known: set[str] = {me.worker_id}
    for beat in system_repo.heartbeats(conn):
        known.add(beat.worker_id)
        reason = why_gone(beat, me=me, now=now, stale_after=stale_after, alive=alive)
        if reason is None:
            continue
        if system_repo.forget_gone_worker(conn, beat.worker_id, beat.beat_at):
            gone[beat.worker_id] = reason
    rows = leases.reclaim_leases(conn, change, gone)
    for worker_id in sorted(leases.lessees(conn) - known):
        orphaned = leases.reclaim_leases(conn, change, [worker_id], leased_before=now - stale_after)
        if orphaned:
            gone[worker_id] = "no heartbeat row and its leases are older than the window"
            rows += orphaned
    return Reclaimed(gone, rows)
