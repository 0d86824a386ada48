"""Mailmodo → CleverTap benchmark: callbacks accepted per second, and events per second
reaching a (fake) CleverTap upload endpoint, with records per upload request.

    make bench-events        # or: .venv/bin/python bench/events.py

Three runs, one after the other, each on a fresh SQLite file (durable: synchronous=FULL):

1. ``ingest``  — ``ctmm-bridge serve`` without a worker; wrk posts distinct "opened" callbacks
   for BENCH_DURATION: durable callbacks accepted per second and their latency. This leaves
   a backlog of N events in the outbox.
2. ``burst``   — ``ctmm-bridge worker`` is started on that backlog (a burst of N events all
   due at once): events per second uploaded to the fake CleverTap, records per request.
3. ``sustained`` — ``serve`` with its embedded worker while wrk posts callbacks: events per
   second from the first callback to the last upload, and records per request while
   callbacks keep arriving.

Needs wrk (the script installs nothing). Settings: PYTHON, BENCH_DURATION (default 20s),
BENCH_CONNECTIONS (32), BENCH_THREADS (2), BENCH_OUT (bench/out/events-<time>).
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from common import stop, wait_port

ROOT = Path(__file__).resolve().parents[1]
PYTHON = os.environ.get("PYTHON", sys.executable)
DURATION = os.environ.get("BENCH_DURATION", "20s")
CONNECTIONS = os.environ.get("BENCH_CONNECTIONS", "32")
THREADS = os.environ.get("BENCH_THREADS", "2")
STAMP = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
OUT = Path(os.environ.get("BENCH_OUT", ROOT / "bench" / "out" / f"events-{STAMP}")).resolve()
BRIDGE_PORT, FAKE_PORT = 18193, 18194
SECRET = f"bench-mm-{STAMP}"
TARGET_RATE, TARGET_BATCH = 4000, 900


@dataclass
class WrkResult:
    ok: int
    non2xx: int
    errors: int
    seconds: float
    ok_rps: float
    p50_ms: float
    p99_ms: float


def bridge_env(db: Path, *, embedded: bool) -> dict[str, str]:
    return {
        **os.environ,
        "BRIDGE_DATABASE_URL": f"sqlite:///{db}",
        "BRIDGE_PORT": str(BRIDGE_PORT),
        "BRIDGE_MAILMODO_WEBHOOK_SECRETS": SECRET,
        "BRIDGE_CLEVERTAP_ACCOUNT_ID": "BENCH-ACCOUNT",
        "BRIDGE_CLEVERTAP_PASSCODE": "BENCH-PASSCODE",
        "BRIDGE_CLEVERTAP_API_URL": f"http://127.0.0.1:{FAKE_PORT}",
        "BRIDGE_EMBEDDED_WORKER": "true" if embedded else "false",
        "BRIDGE_LOG_FORMAT": "json",
        "BRIDGE_LOG_LEVEL": "WARNING",
    }


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


def wrk(name: str) -> WrkResult:
    result_file = OUT / f"{name}.result"
    env = {
        **os.environ,
        "BENCH_TAG": f"{name}-{STAMP}",
        "BENCH_SECRET": SECRET,
        "BENCH_RESULT_FILE": str(result_file),
    }
    with (OUT / f"{name}.wrk.txt").open("w") as out:
        subprocess.run(
            [
                "wrk",
                f"-t{THREADS}",
                f"-c{CONNECTIONS}",
                f"-d{DURATION}",
                "--latency",
                "-s",
                str(ROOT / "bench" / "events.lua"),
                f"http://127.0.0.1:{BRIDGE_PORT}",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=True,
        )
    fields = dict(part.split("=") for part in result_file.read_text().split()[1:])
    return WrkResult(
        int(fields["ok"]),
        int(fields["non2xx"]),
        int(fields["errors"]),
        float(fields["duration_s"]),
        float(fields["ok_rps"]),
        float(fields["p50_ms"]),
        float(fields["p99_ms"]),
    )


def fake_stats() -> dict[str, object]:
    stats: dict[str, object] = httpx.get(f"http://127.0.0.1:{FAKE_PORT}/_stats", timeout=10).json()
    return stats


def wait_uploaded(expected: int, timeout: float = 300) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = fake_stats()
        if int(stats["records"]) >= expected:  # type: ignore[call-overload]
            return stats
        time.sleep(0.2)
    raise SystemExit(f"only {fake_stats()['records']} of {expected} events were uploaded")


def sizes_line(sizes: list[int]) -> str:
    if not sizes:
        return "no requests"
    full = sum(1 for s in sizes if s >= 1000)
    return (
        f"{len(sizes)} requests, mean {statistics.fmean(sizes):.0f}, "
        f"median {statistics.median(sizes):.0f}, min {min(sizes)}, max {max(sizes)}, "
        f"{full} full (1000)"
    )


def main() -> int:
    if shutil.which("wrk") is None:
        print(
            "wrk is not installed: sudo apt-get install -y wrk (Debian/Ubuntu), "
            "brew install wrk (macOS)",
            file=sys.stderr,
        )
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    fake_log = OUT / "fake_clevertap.log"
    fake = start(
        [
            PYTHON,
            "-m",
            "uvicorn",
            "bench.fake_clevertap:app",
            "--port",
            str(FAKE_PORT),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        dict(os.environ),
        fake_log,
    )
    procs = [fake]
    lines: list[str] = []
    try:
        wait_port(FAKE_PORT, fake, fake_log, timeout=30)

        # 1. ingest only, leaving a backlog
        db = OUT / "burst.db"
        log = OUT / "ingest.log"
        serve = start([PYTHON, "-m", "app.cli", "serve"], bridge_env(db, embedded=False), log)
        procs.append(serve)
        wait_port(BRIDGE_PORT, serve, log, timeout=30)
        ingest = wrk("ingest")
        stop(serve, timeout=60)
        backlog = ingest.ok
        lines.append(
            f"| ingest (durable, no worker) | {ingest.ok_rps:,.0f} callbacks/s | "
            f"p50 {ingest.p50_ms:.1f} ms, p99 {ingest.p99_ms:.1f} ms | "
            f"{ingest.ok:,} accepted, {ingest.non2xx} non-2xx, {ingest.errors} errors |"
        )

        # 2. burst: a worker drains the backlog
        httpx.post(f"http://127.0.0.1:{FAKE_PORT}/_reset", timeout=10)
        log = OUT / "burst-worker.log"
        started = time.time()
        worker = start([PYTHON, "-m", "app.cli", "worker"], bridge_env(db, embedded=False), log)
        procs.append(worker)
        stats = wait_uploaded(backlog)
        stop(worker, timeout=60)
        sizes = list(stats["sizes"])  # type: ignore[call-overload]
        span = float(stats["last"]) - started  # type: ignore[arg-type]
        burst_rate = backlog / span
        burst_mean = statistics.fmean(sizes)
        lines.append(
            f"| burst: worker drains {backlog:,} due events | {burst_rate:,.0f} events/s "
            f"(worker start to last upload, {span:.1f} s) | {sizes_line(sizes)} | |"
        )

        # 3. sustained: callbacks and uploads at the same time
        httpx.post(f"http://127.0.0.1:{FAKE_PORT}/_reset", timeout=10)
        db = OUT / "sustained.db"
        log = OUT / "sustained.log"
        serve = start([PYTHON, "-m", "app.cli", "serve"], bridge_env(db, embedded=True), log)
        procs.append(serve)
        wait_port(BRIDGE_PORT, serve, log, timeout=30)
        began = time.time()
        sustained = wrk("sustained")
        stats = wait_uploaded(sustained.ok)
        stop(serve, timeout=60)
        sizes = list(stats["sizes"])  # type: ignore[call-overload]
        span = float(stats["last"]) - began  # type: ignore[arg-type]
        lines.append(
            f"| sustained: callbacks and uploads together | {sustained.ok_rps:,.0f} callbacks/s, "
            f"{sustained.ok / span:,.0f} events/s end to end | p50 {sustained.p50_ms:.1f} ms, "
            f"p99 {sustained.p99_ms:.1f} ms | {sizes_line(sizes)} |"
        )
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    met = burst_rate >= TARGET_RATE and burst_mean >= TARGET_BATCH
    summary = "\n".join(
        [
            f"# Mailmodo → CleverTap events benchmark ({STAMP} UTC)",
            "",
            f"Machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
            f"Python {platform.python_version()}, {platform.platform()}",
            f"Command: `{PYTHON} bench/events.py` (wrk -t{THREADS} -c{CONNECTIONS} -d{DURATION})",
            "",
            "| run | rate | latency | detail |",
            "|---|---|---|---|",
            *lines,
            "",
            f"Target (issue 3): ≥ {TARGET_RATE:,} events/s end to end with ≥ {TARGET_BATCH} "
            "records "
            f"per request under a burst: {'MET' if met else 'NOT MET'} "
            f"({burst_rate:,.0f} events/s, {burst_mean:.0f} records/request).",
        ]
    )
    (OUT / "summary.md").write_text(summary + "\n")
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
