"""What the benchmark scripts share: waiting for a server they started, stopping it, and the
CPU and memory of a process with all of its descendants (``serve``'s writer and worker
children), read from ``/proc`` (Linux).

The scripts run as ``python bench/<name>.py``, so this folder is on their path:
``from common import stop, wait_port``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def wait_port(
    port: int,
    proc: subprocess.Popen[bytes],
    log: Path,
    timeout: float = 120,
    interval: float = 0.05,
) -> None:
    """Return once something listens on 127.0.0.1:``port``; exit with the tail of ``log`` if
    ``proc`` died first, or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"process on port {port} exited; see {log}:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(interval)
    sys.exit(f"nothing listens on port {port} after {timeout} s")


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM (the bridge's graceful stop), then SIGKILL if it has not ended in ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _stat(path: Path) -> list[str] | None:
    """The fields of a ``/proc/<pid>/stat`` after the command name (state is [0], ppid [1],
    utime [11], stime [12], rss pages [21]); None when the process is gone."""
    try:
        raw = path.read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def tree_detail(pid: int) -> tuple[dict[int, int], int]:
    """CPU ticks (user + system) of ``pid`` and each of its descendants, by pid, and their
    RSS bytes together."""
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(entry / "stat")) is not None:
            stats[int(entry.name)] = fields
    parents = {p: int(fields[1]) for p, fields in stats.items()}
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in tree:
                tree.add(child)
                frontier.append(child)
    per: dict[int, int] = {}
    rss = 0
    for p in tree:
        fields = stats.get(p)
        if fields:
            per[p] = int(fields[11]) + int(fields[12])
            rss += int(fields[21]) * PAGE
    return per, rss


def tree_pss(pids: Iterable[int]) -> int:
    """Proportional set size in bytes of ``pids`` together: each page shared by several of them
    (a forked child's pages shared with its fork server) counted once in all, where summed RSS
    counts it in every process. Linux 4.14+ (``smaps_rollup``); 0 where it is missing."""
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) * 1024
                break
    return total


def tree_ticks(pid: int) -> tuple[int, int]:
    """CPU ticks and RSS bytes of ``pid`` and all of its descendants."""
    per, rss = tree_detail(pid)
    return sum(per.values()), rss


def cpu_seconds(pids: Iterable[int], *, descendants: bool = True) -> float:
    """CPU seconds (user + system) of ``pids``, with their descendants unless told not to."""
    ticks = 0
    for pid in pids:
        if descendants:
            ticks += tree_ticks(pid)[0]
        elif (fields := _stat(Path(f"/proc/{pid}/stat"))) is not None:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK
