"""The outbox at a million pending deliveries: a Mailmodo outage's backlog, then its drain.

    .venv/bin/python bench/backlog.py      # ~4 minutes; BENCH_BACKLOG=100000 for a quick one
    BENCH_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1/backlog \
        .venv/bin/python bench/backlog.py

1. **Build** (``bench/backlog_db.py``): BENCH_BACKLOG (1,000,000) pending Mailmodo deliveries,
   one inbound call each, cloned in SQL from a call stored by the ingest code, plus 100,000
   delivered and a few thousand failed, dead, cancelled and parked rows. A fresh SQLite file in
   the output directory unless BENCH_DATABASE_URL names another (PostgreSQL: emptied first).
2. **Queries, in-process**: the worker's claim (1 and 100 rows, rolled back), one count of the
   outbox (what a refresh of the counts snapshot costs, off the request path), the ``/metrics``
   outbox collector and admin stats (both reading the snapshot) and a page of pending
   deliveries; wall and CPU ms.
3. **Mailmodo down**: ``ctmm-bridge serve`` at its defaults (embedded worker on) with
   ``BRIDGE_MAILMODO_RATE_PER_SECOND`` = BENCH_BACKLOG_RATE (500), pointed at a port where nothing
   listens (every call fails to connect and is retried later). After BENCH_DOWN_SECONDS (20):
   ``GET /metrics``, ``GET /admin/stats`` and ``GET /admin/deliveries?states=pending&limit=50``
   over HTTP, BENCH_SAMPLES (10) each, one at a time, with the CPU time of serve's API process
   per request.
4. **Mailmodo back**: the zero-latency fake (``bench/fake_mailmodo.py``) starts on that port; for
   BENCH_DRAIN_SECONDS (120) the script samples the calls it received and the RSS of serve's
   whole process tree every second (and the HTTP latencies every 10 s). Drain rate = calls per
   second after the first 10 s (the worker's backoff of the calls that failed while down).

Prints one ``BACKLOG_RESULT`` line and writes ``bench/out/backlog-<stamp>/`` (database, logs,
``samples.csv``, ``backlog.result``). Installs nothing; exits 1 when a target is missed:
claim, /metrics and /admin/stats < 100 ms, drain within 10 % of the rate, RSS flat within 20 %.
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
import backlog_db
from common import CLK_TCK, cpu_seconds, stop, tree_ticks, wait_port

ROOT = Path(__file__).resolve().parents[1]
PYTHON = os.environ.get("PYTHON", sys.executable)
BACKLOG = int(os.environ.get("BENCH_BACKLOG", "1000000"))
RATE = float(os.environ.get("BENCH_BACKLOG_RATE", "500"))
DOWN_SECONDS = float(os.environ.get("BENCH_DOWN_SECONDS", "20"))
DRAIN_SECONDS = float(os.environ.get("BENCH_DRAIN_SECONDS", "120"))
SAMPLES = int(os.environ.get("BENCH_SAMPLES", "10"))
STAMP = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
OUT = Path(os.environ.get("BENCH_OUT", ROOT / "bench" / "out" / f"backlog-{STAMP}")).resolve()
URL = os.environ.get("BENCH_DATABASE_URL", f"sqlite:///{OUT / 'backlog.db'}")
BRIDGE_PORT = int(os.environ.get("BENCH_BACKLOG_PORT", "18186"))
FAKE_PORT = int(os.environ.get("BENCH_FAKE_PORT", "18187"))
ADMIN = "bench-admin-token"
FAKE_ARGS = ["--port", str(FAKE_PORT), "--no-access-log", "--log-level", "warning"]


def http_latencies(client: httpx.Client, samples: int, pid: int) -> dict[str, float]:
    """Worst and median milliseconds of each read, one request at a time, and the CPU time of
    serve's API process (``pid``, not its writer and worker children) per request: it holds
    on a busy machine where the wall times do not (10 ms ticks: take enough samples)."""
    auth = {"Authorization": f"Bearer {ADMIN}"}
    paths = {
        "metrics": ("/metrics", {}),
        "stats": ("/admin/stats", auth),
        "list": ("/admin/deliveries?states=pending&limit=50", auth),
    }
    result: dict[str, float] = {}
    for name, (path, headers) in paths.items():
        times = []
        cpu = cpu_seconds([pid], descendants=False)
        for _ in range(samples):
            t = time.perf_counter()
            resp = client.get(path, headers=headers)
            times.append((time.perf_counter() - t) * 1000)
            resp.raise_for_status()
        result[f"{name}_p50_ms"] = statistics.median(times)
        result[f"{name}_max_ms"] = max(times)
        result[f"{name}_cpu_ms"] = (cpu_seconds([pid], descendants=False) - cpu) * 1000 / samples
    return result


def fake_calls() -> int:
    return int(httpx.get(f"http://127.0.0.1:{FAKE_PORT}/_stats", timeout=10).json()["calls"])


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"building {BACKLOG:,} pending deliveries at {URL}", flush=True)
    built = backlog_db.build(URL, BACKLOG, log=lambda line: print(line, flush=True))
    queries = backlog_db.measure(URL)
    for name, f in queries.items():
        print(f"  {name}: {f['p50_ms']:.1f} ms (max {f['max_ms']:.1f}, cpu {f['cpu_ms']:.1f})")
    env = os.environ | {
        "BRIDGE_DATABASE_URL": URL,
        "BRIDGE_CLEVERTAP_WEBHOOK_SECRETS": "bench-secret",
        "BRIDGE_MAILMODO_WEBHOOK_SECRETS": "bench-mm-secret",
        "BRIDGE_ADMIN_TOKEN": ADMIN,
        "BRIDGE_MAILMODO_API_KEY": "bench-key",
        "BRIDGE_MAILMODO_API_URL": f"http://127.0.0.1:{FAKE_PORT}",
        "BRIDGE_MAILMODO_RATE_PER_SECOND": str(RATE),
        "BRIDGE_LOG_FORMAT": "json",
        "BRIDGE_LOG_LEVEL": "WARNING",
    }
    log = OUT / "serve.log"
    cmd = [PYTHON, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(BRIDGE_PORT)]
    with log.open("ab") as fh:
        serve = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    fake: subprocess.Popen[bytes] | None = None
    rows: list[tuple[float, int, int]] = []
    during: list[dict[str, float]] = []
    try:
        wait_port(BRIDGE_PORT, serve, log)
        client = httpx.Client(base_url=f"http://127.0.0.1:{BRIDGE_PORT}", timeout=60)
        time.sleep(DOWN_SECONDS)
        _, rss_down = tree_ticks(serve.pid)
        down = http_latencies(client, SAMPLES, serve.pid)
        print(f"  Mailmodo down, over HTTP: {down}", flush=True)
        fake_log = OUT / "fake-mailmodo.log"
        with fake_log.open("wb") as fh:
            fake = subprocess.Popen(
                [PYTHON, "-m", "uvicorn", "bench.fake_mailmodo:app", *FAKE_ARGS],
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        wait_port(FAKE_PORT, fake, fake_log)
        started = time.monotonic()
        ticks0, _ = tree_ticks(serve.pid)
        next_http = started + 10
        while (now := time.monotonic()) - started < DRAIN_SECONDS:
            _, rss = tree_ticks(serve.pid)
            rows.append((now - started, fake_calls(), rss))
            if now >= next_http:
                during.append(http_latencies(client, 3, serve.pid))
                next_http += 10
            time.sleep(max(0.0, 1 - (time.monotonic() - now)))
        ticks1, _ = tree_ticks(serve.pid)
        client.close()
    finally:
        stop(serve)
        if fake is not None:
            fake.terminate()
            fake.wait(10)
    with (OUT / "samples.csv").open("w") as fh:
        fh.write("seconds,mailmodo_calls,rss_bytes\n")
        fh.writelines(f"{t:.2f},{c},{r}\n" for t, c, r in rows)
    t10 = next(r for r in rows if r[0] >= 10)
    last = rows[-1]
    drain = (last[1] - t10[1]) / (last[0] - t10[0])
    rss_start, rss_peak, rss_end = rows[0][2], max(r[2] for r in rows), last[2]
    flat = rss_peak / rss_start
    cpu_us = (ticks1 - ticks0) / CLK_TCK * 1e6 / max(last[1], 1)
    worst = {k: max([down[k]] + [d[k] for d in during]) for k in down if k.endswith("max_ms")}
    claim_ms = max(queries["claim_1"]["max_ms"], queries["claim_100"]["p50_ms"])
    met = {
        "queries": all(v < 100 for v in (claim_ms, down["metrics_p50_ms"], down["stats_p50_ms"])),
        "drain": drain >= 0.9 * RATE,
        "rss": flat <= 1.2,
    }
    mb = 2**20
    missed = ",".join(k for k, v in met.items() if not v)
    line = (
        f"BACKLOG_RESULT db={URL.split(':')[0]} pending={built['pending']} rate={RATE:g} "
        f"claim1_ms={queries['claim_1']['p50_ms']:.1f} "
        f"claim100_ms={queries['claim_100']['p50_ms']:.1f} "
        f"count_ms={queries['outbox_count']['p50_ms']:.0f} "
        f"count_cpu_ms={queries['outbox_count']['cpu_ms']:.0f} "
        f"collector_ms={queries['metrics_collect']['p50_ms']:.1f} "
        f"collector_cpu_ms={queries['metrics_collect']['cpu_ms']:.1f} "
        f"stats_cpu_ms={queries['admin_stats']['cpu_ms']:.1f} "
        f"metrics_p50_ms={down['metrics_p50_ms']:.0f} stats_p50_ms={down['stats_p50_ms']:.0f} "
        f"metrics_max_ms={down['metrics_max_ms']:.0f} stats_max_ms={down['stats_max_ms']:.0f} "
        f"metrics_cpu_ms={down['metrics_cpu_ms']:.1f} stats_cpu_ms_http={down['stats_cpu_ms']:.1f} "
        f"list_p50_ms={down['list_p50_ms']:.0f} "
        f"worst_metrics_ms={worst['metrics_max_ms']:.0f} "
        f"worst_stats_ms={worst['stats_max_ms']:.0f} "
        f"drained={last[1]} drain_per_s={drain:.0f} cpu_us_per_delivery={cpu_us:.0f} "
        f"rss_down_mb={rss_down / mb:.0f} rss_start_mb={rss_start / mb:.0f} "
        f"rss_peak_mb={rss_peak / mb:.0f} rss_end_mb={rss_end / mb:.0f} rss_flat={flat:.2f} "
        f"targets={'MET' if all(met.values()) else 'NOT_MET:' + missed}"
    )
    print(line)
    (OUT / "backlog.result").write_text(line + "\n")
    return 0 if all(met.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
