"""Every request's latency of ``GET /metrics`` and ``GET /admin/stats`` against ``serve`` on an
outbox already built (``bench/backlog_db.py``), spaced so that the counts snapshot is recounted
while they are asked; and the CPU time of serve's API process per request:

    .venv/bin/python bench/backlog_db.py sqlite:////tmp/backlog.db 1000000
    .venv/bin/python bench/backlog_reads.py sqlite:////tmp/backlog.db
    BENCH_READS=150 BENCH_GAP_SECONDS=0.1 .venv/bin/python bench/backlog_reads.py \\
        postgresql+psycopg://postgres@127.0.0.1/backlog

``serve`` runs from this checkout (``BENCH_ROOT`` names another, e.g. an export of ``main`` to
compare) with Mailmodo down (its URL points where nothing listens), the embedded worker on.
Prints p50, p90, the maximum after the first request (the first of each kind in a new process
is slow for reasons of its own) and the first. Installs nothing.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backlog import ADMIN
from common import cpu_seconds, stop, wait_port

ROOT = Path(os.environ.get("BENCH_ROOT", Path(__file__).resolve().parents[1]))
READS = int(os.environ.get("BENCH_READS", "150"))
GAP = float(os.environ.get("BENCH_GAP_SECONDS", "0.1"))
SETTLE = float(os.environ.get("BENCH_SETTLE_SECONDS", "15"))
PORT = int(os.environ.get("BENCH_READS_PORT", "18196"))


def main() -> int:
    url = sys.argv[1]
    env = os.environ | {
        "BRIDGE_DATABASE_URL": url,
        "BRIDGE_CLEVERTAP_WEBHOOK_SECRETS": "bench-secret",
        "BRIDGE_MAILMODO_WEBHOOK_SECRETS": "bench-mm-secret",
        "BRIDGE_ADMIN_TOKEN": ADMIN,
        "BRIDGE_MAILMODO_API_KEY": "bench-key",
        "BRIDGE_MAILMODO_API_URL": f"http://127.0.0.1:{PORT + 1}",
        "BRIDGE_LOG_FORMAT": "json",
        "BRIDGE_LOG_LEVEL": "WARNING",
    }
    log = Path(os.environ.get("BENCH_LOG", "/tmp/backlog-reads-serve.log"))
    cmd = [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(PORT)]
    with log.open("ab") as fh:
        serve = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_port(PORT, serve, log)
        time.sleep(SETTLE)
        headers = {"Authorization": f"Bearer {ADMIN}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{PORT}", timeout=60, headers=headers) as c:
            for path in ("/metrics", "/admin/stats"):
                times = []
                cpu = cpu_seconds([serve.pid], descendants=False)
                for _ in range(READS):
                    started = time.perf_counter()
                    c.get(path).raise_for_status()
                    times.append((time.perf_counter() - started) * 1000)
                    time.sleep(GAP)
                cpu = (cpu_seconds([serve.pid], descendants=False) - cpu) * 1000 / READS
                warm = times[1:]
                print(
                    f"{path}: {READS} reads, p50 {statistics.median(warm):.1f} ms, "
                    f"p90 {statistics.quantiles(warm, n=10)[8]:.1f} ms, max {max(warm):.1f} ms "
                    f"(first {times[0]:.1f} ms); API process CPU {cpu:.1f} ms per request"
                )
    finally:
        stop(serve)
    return 0


if __name__ == "__main__":
    sys.exit(main())
