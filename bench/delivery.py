"""Delivery benchmark: how fast ``serve`` at its defaults drains a backlog to a Mailmodo that is
not the limit, and what each delivery costs in CPU across all of the bridge's processes.

    .venv/bin/python bench/delivery.py          # bench/run.sh runs it as its last step

1. A zero-latency fake Mailmodo (``bench/fake_mailmodo.py``) starts on its own port.
2. ``ctmm-bridge serve`` with its worker off takes BENCH_DRAIN_CALLS campaign calls (default
   5,000, distinct recipients, 32 at a time) into a fresh SQLite file, then stops (SIGTERM).
3. ``ctmm-bridge serve`` at its defaults (embedded worker on) starts on that backlog, pointed at
   the fake with ``BRIDGE_MAILMODO_RATE_PER_SECOND=100000`` (so the rate limit is not the limit
   either) and default concurrency. The fake counts the calls; the run ends when every backlog
   item reached it (or BENCH_DRAIN_TIMEOUT seconds, default 120, passed).

Reported: deliveries/s (first to last call at the fake), CPU per delivery (the bridge's process
tree, from "listening" to the last delivery, so what the worker does to start after that is in
it; the fork server has imported its modules before), the same in the steady state (from a
tenth of the backlog delivered to the last delivery) and split by process (the API first, then
its children, busiest first), how many calls reached the fake twice, and the tree's memory at
the start, peak and end: RSS summed over the processes (pages the children share with the fork
server counted in each) and PSS (each page counted once in all).
Prints one ``DELIVERY_RESULT`` line of key=value pairs. Needs no wrk.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from common import CLK_TCK, stop, tree_detail, tree_pss, wait_port

ROOT = Path(__file__).resolve().parents[1]
PYTHON = os.environ.get("PYTHON", sys.executable)
CALLS = int(os.environ.get("BENCH_DRAIN_CALLS", "5000"))
TIMEOUT = float(os.environ.get("BENCH_DRAIN_TIMEOUT", "120"))
STAMP = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
OUT = Path(os.environ.get("BENCH_OUT", ROOT / "bench" / "out" / f"delivery-{STAMP}")).resolve()
BRIDGE_PORT = int(os.environ.get("BENCH_DRAIN_PORT", "18185"))
FAKE_PORT = int(os.environ.get("BENCH_FAKE_PORT", "18183"))
SECRET = f"bench-secret-{STAMP}"

BODY = (
    '{"targetId":1472124953,"key_values":{"PromoCode":"MT50"},'
    '"profiles":[{"Email":"%s@bench.example.com","Identity":"%s","ObjectId":"-g%s",'
    '"ProfileData":{"Last Score":308}}]}'
)


def bridge(db: Path, log: Path, **env: str) -> subprocess.Popen[bytes]:
    full = os.environ | {
        "BRIDGE_DATABASE_URL": f"sqlite:///{db}",
        "BRIDGE_CLEVERTAP_WEBHOOK_SECRETS": SECRET,
        "BRIDGE_MAILMODO_WEBHOOK_SECRETS": f"bench-mm-{STAMP}",
        "BRIDGE_ADMIN_TOKEN": f"bench-admin-{STAMP}",
        "BRIDGE_MAILMODO_API_KEY": "bench-key",
        "BRIDGE_MAILMODO_API_URL": f"http://127.0.0.1:{FAKE_PORT}",
        "BRIDGE_LOG_FORMAT": "json",
    }
    full |= env
    cmd = [PYTHON, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(BRIDGE_PORT)]
    with log.open("ab") as fh:
        proc = subprocess.Popen(cmd, env=full, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    wait_port(BRIDGE_PORT, proc, log, timeout=60)
    return proc


async def load(n: int, concurrency: int = 32) -> int:
    """Post ``n`` campaign calls with distinct recipients; return how many were accepted."""
    auth = httpx.BasicAuth("clevertap", SECRET)
    url = f"http://127.0.0.1:{BRIDGE_PORT}/clevertap/campaigns/bench-drain"
    ok = 0
    queue = iter(range(n))

    async def one(client: httpx.AsyncClient) -> None:
        nonlocal ok
        for i in queue:
            who = f"drain-{STAMP}-{i}"
            resp = await client.post(
                url,
                content=BODY % (who, who, who),
                auth=auth,
                headers={"content-type": "application/json"},
            )
            ok += resp.status_code == 200

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        await asyncio.gather(*(one(client) for _ in range(concurrency)))
    return ok


def fake_stats() -> dict[str, float]:
    resp = httpx.get(f"http://127.0.0.1:{FAKE_PORT}/_stats", timeout=10)
    return dict(resp.json())


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    db = OUT / "drain.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    fake_log = OUT / "fake-mailmodo.log"
    with fake_log.open("wb") as fh:
        fake = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "uvicorn",
                "bench.fake_mailmodo:app",
                "--port",
                str(FAKE_PORT),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        wait_port(FAKE_PORT, fake, fake_log, timeout=60)
        loader = bridge(db, OUT / "drain-load.log", BRIDGE_EMBEDDED_WORKER="false")
        try:
            accepted = asyncio.run(load(CALLS))
        finally:
            stop(loader)
        httpx.post(f"http://127.0.0.1:{FAKE_PORT}/_reset", timeout=10)
        drainer = bridge(db, OUT / "drain.log", BRIDGE_MAILMODO_RATE_PER_SECOND="100000")
        try:
            start_per, start_rss = tree_detail(drainer.pid)
            start_pss = peak_pss = tree_pss(start_per)
            start_ticks = sum(start_per.values())
            before_ready = int(fake_stats()["calls"])
            peak_rss = start_rss
            deadline = time.monotonic() + TIMEOUT
            stats = fake_stats()
            # The steady state: from the first tenth of the backlog delivered (the worker's
            # start-up and first connections behind it) to the end.
            steady: tuple[dict[int, int], int] | None = None
            while stats["calls"] < accepted and time.monotonic() < deadline:
                time.sleep(0.1)
                per, rss = tree_detail(drainer.pid)
                peak_rss = max(peak_rss, rss)
                peak_pss = max(peak_pss, tree_pss(per))
                stats = fake_stats()
                if steady is None and stats["calls"] >= accepted // 10:
                    steady = (per, int(stats["calls"]))
            end_per, end_rss = tree_detail(drainer.pid)
            end_pss = tree_pss(end_per)
            end_ticks = sum(end_per.values())
        finally:
            stop(drainer)
    finally:
        fake.terminate()
        fake.wait(10)
    calls = int(stats["calls"])
    span = (stats["last"] or 0) - (stats["first"] or 0)
    rate = calls / span if span > 0 else 0.0
    delivered_after_ready = max(calls - before_ready, 1)
    cpu_us = (end_ticks - start_ticks) / CLK_TCK * 1e6 / delivered_after_ready
    done = calls >= accepted
    steady_us = by_process = "n/a"
    if steady is not None and calls > steady[1]:
        mid_per, mid_calls = steady
        us = 1e6 / CLK_TCK / (calls - mid_calls)
        spent = {pid: end_per.get(pid, 0) - mid_per.get(pid, 0) for pid in end_per}
        steady_us = f"{sum(spent.values()) * us:.0f}"
        # The API first, then its children by CPU spent (the worker is the busiest).
        api = spent.pop(drainer.pid, 0)
        by_process = "/".join(f"{t * us:.0f}" for t in [api, *sorted(spent.values(), reverse=True)])
    line = (
        f"DELIVERY_RESULT backlog={accepted} delivered={calls} complete={'yes' if done else 'no'} "
        f"seconds={span:.2f} deliveries_per_s={rate:.0f} cpu_us_per_delivery={cpu_us:.0f} "
        f"delivered_before_ready={before_ready} rss_start_mb={start_rss / 2**20:.0f} "
        f"rss_peak_mb={peak_rss / 2**20:.0f} rss_end_mb={end_rss / 2**20:.0f} "
        f"pss_start_mb={start_pss / 2**20:.0f} pss_peak_mb={peak_pss / 2**20:.0f} "
        f"pss_end_mb={end_pss / 2**20:.0f} "
        f"steady_cpu_us_per_delivery={steady_us} steady_us_api_then_children={by_process}"
    )
    print(line)
    (OUT / "delivery.result").write_text(line + "\n")
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
