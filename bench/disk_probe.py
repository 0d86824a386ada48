"""How fast the disk under the benchmark commits: one durable SQLite commit per call.

Usage: python bench/disk_probe.py DIRECTORY [SECONDS]

Inserts one ~1.5 KB row per transaction (WAL, synchronous=FULL, as the bridge) for a few
seconds and prints ``DISK_RESULT commits_per_s=.. p50_ms=.. p99_ms=..``: the ceiling of a
bridge that fsynced every call on its own, which group commit is there to beat.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
import time


def main() -> int:
    directory = sys.argv[1]
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        conn = sqlite3.connect(os.path.join(tmp, "probe.db"), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        body = "x" * 1500
        latencies: list[float] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            start = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (body) VALUES (?)", (body,))
            conn.execute("COMMIT")
            latencies.append(time.perf_counter() - start)
        conn.close()
    latencies.sort()
    n = len(latencies)
    print(
        f"DISK_RESULT commits_per_s={n / sum(latencies):.0f} "
        f"p50_ms={latencies[n // 2] * 1000:.2f} p99_ms={latencies[int(n * 0.99)] * 1000:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
