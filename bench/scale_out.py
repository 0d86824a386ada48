"""Scale-out numbers on PostgreSQL (issue 14):

1. ``ingest``  — durable CleverTap calls/s with 1, 2 and 4 ``serve`` replicas under the same
   load (wrk, BENCH_CONNECTIONS in total, split over the replicas, distinct recipients), and
   the bridge's CPU seconds per 1,000 calls (API processes and their writer children; the
   PostgreSQL server's own CPU is shown apart), which contention on a busy machine moves
   much less than calls/s.
2. ``deliver`` — a backlog of BENCH_BACKLOG triggers sent to a fake Mailmodo (20 ms per call)
   by 1 and by 3 ``worker`` processes: triggers/s and worker CPU per 1,000.
3. ``pickup``  — an idle worker (polling every 10 s) and a call accepted by another process:
   from the 2xx to the trigger reaching Mailmodo, BENCH_PICKUPS times (LISTEN/NOTIFY).

    .venv/bin/python bench/scale_out.py [ingest|deliver|pickup ...]

Its own database on BRIDGE_TEST_POSTGRES_URL's server (default: local, trust auth). Needs wrk.
"""

from __future__ import annotations

import base64
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from common import cpu_seconds
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.cluster import (  # noqa: E402 - after the sys.path line
    CT_AUTH,
    CT_SECRET,
    TRIGGER_PATH,
    FakeUpstreams,
    Proc,
    cluster_env,
    migrate,
    trigger_body,
    wait_for,
)

SERVER = os.environ.get(
    "BRIDGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
DURATION = os.environ.get("BENCH_DURATION", "15s")
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
BACKLOG = int(os.environ.get("BENCH_BACKLOG", "3000"))
PICKUPS = int(os.environ.get("BENCH_PICKUPS", "40"))
WORK = Path(tempfile.mkdtemp(prefix="ctmm-scale-"))


def postgres_cpu() -> float:
    """CPU seconds of every PostgreSQL server process on this machine."""
    out = subprocess.run(["pgrep", "-x", "postgres"], capture_output=True, text=True).stdout
    return cpu_seconds((int(pid) for pid in out.split()), descendants=False)


def fresh_database() -> str:
    name = f"ctmm_scale_{uuid.uuid4().hex[:8]}"
    admin = create_engine(SERVER, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(SERVER).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    admin = create_engine(SERVER, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    admin.dispose()


def wrk(url: str, connections: int, tag: str, out: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "BENCH_TAG": tag,
        "BENCH_AUTH": "basic",
        "BENCH_BASIC": base64.b64encode(f"ct:{CT_SECRET}".encode()).decode(),
        "BENCH_CAMPAIGN": "c1",
    }
    with out.open("wb") as log:
        return subprocess.Popen(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{DURATION}",
                "-s",
                str(ROOT / "bench" / "campaign.lua"),
                url + "/clevertap/campaigns/c1",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def ingest(replicas: int, fake: FakeUpstreams) -> str:
    url = fresh_database()
    env = cluster_env(url, fake.url, BRIDGE_LOG_LEVEL="ERROR")
    migrate(env)
    apis = [Proc("serve", env, WORK / f"ingest{replicas}-{n}.log").start() for n in range(replicas)]
    try:
        assert all(a.proc is not None for a in apis)
        pids = [a.proc.pid for a in apis if a.proc is not None]
        cpu0, pg0 = cpu_seconds(pids), postgres_cpu()
        runs = [
            wrk(a.url, CONNECTIONS // replicas, f"r{replicas}n{n}", WORK / f"wrk{replicas}-{n}.txt")
            for n, a in enumerate(apis)
        ]
        for run in runs:
            run.wait()
        cpu, pg = cpu_seconds(pids) - cpu0, postgres_cpu() - pg0
        ok = p99 = 0.0
        p99s = []
        for n in range(replicas):
            line = (WORK / f"wrk{replicas}-{n}.txt").read_text()
            match = re.search(r"BENCH_RESULT .*", line)
            assert match, line
            fields = dict(kv.split("=") for kv in match.group(0).split()[1:])
            ok += float(fields["ok_rps"])
            p99s.append(float(fields["p99_ms"]))
        p99 = max(p99s)
        total = ok * float(DURATION.rstrip("s"))
        return (
            f"ingest, {replicas} API process(es): {ok:,.0f} calls/s, p99 {p99:.1f} ms (worst "
            f"replica); bridge CPU {cpu / total * 1000:.2f} s per 1,000 calls, PostgreSQL CPU "
            f"{pg / total * 1000:.2f} s per 1,000"
        )
    finally:
        for a in apis:
            a.kill()
        drop_database(url)


def deliver(workers: int, fake: FakeUpstreams) -> str:
    from tests.factories import add_deliveries

    url = fresh_database()
    env = cluster_env(
        url,
        fake.url,
        BRIDGE_LOG_LEVEL="ERROR",
        BRIDGE_MAILMODO_MAX_CONCURRENCY="16",
        BRIDGE_MAILMODO_RATE_PER_SECOND="5000",
        BRIDGE_LEASE_SECONDS="60",
    )
    migrate(env)
    engine = create_engine(url)
    for start in range(0, BACKLOG, 1000):
        add_deliveries(engine, *(f"d{n}@example.com" for n in range(start, start + 1000)))
    engine.dispose()
    fake.delay, fake.fail_5xx, fake.fail_429 = 0.02, 0.0, 0.0
    before = len(fake.triggers)
    procs = [Proc("worker", env, WORK / f"deliver{workers}-{n}.log") for n in range(workers)]
    try:
        t0 = time.monotonic()
        for p in procs:
            p.start(wait=False)  # together, their start-up inside the measured time as before
        pids = [p.proc.pid for p in procs if p.proc is not None]
        cpu0 = cpu_seconds(pids)
        wait_for(lambda: len(fake.triggers) - before >= BACKLOG, 600, "the backlog")
        took = time.monotonic() - t0
        cpu = cpu_seconds(pids) - cpu0
    finally:
        for p in procs:
            p.kill()
        drop_database(url)
    return (
        f"delivery, {workers} worker(s), {BACKLOG} triggers at 20 ms each: "
        f"{BACKLOG / took:,.0f} triggers/s (incl. start-up), worker CPU "
        f"{cpu / BACKLOG * 1000:.2f} s per 1,000"
    )


def pickup(fake: FakeUpstreams) -> str:
    url = fresh_database()
    env = cluster_env(url, fake.url, BRIDGE_WORKER_POLL_SECONDS="10", BRIDGE_LOG_LEVEL="ERROR")
    migrate(env)
    fake.delay, fake.fail_5xx, fake.fail_429 = 0.0, 0.0, 0.0
    api = Proc("serve", env, WORK / "pickup-api.log").start()
    worker = Proc("worker", env, WORK / "pickup-worker.log").start()
    latencies = []
    try:
        time.sleep(2)  # the worker is up and LISTENing
        with httpx.Client(timeout=10, auth=CT_AUTH) as client:
            for n in range(PICKUPS):
                before = len(fake.triggers)
                answer = client.post(api.url + TRIGGER_PATH, json=trigger_body(f"p{n}@x.com"))
                acked = time.time()
                assert answer.status_code == 200
                wait_for(lambda: len(fake.triggers) > before, 15, "the trigger")  # noqa: B023
                latencies.append((fake.triggers[-1][0] - acked) * 1000)
                time.sleep(0.2)
    finally:
        api.kill()
        worker.kill()
        drop_database(url)
    latencies.sort()
    p50 = statistics.median(latencies)
    p90 = latencies[int(len(latencies) * 0.9) - 1]
    return (
        f"pick-up, idle worker polling every 10 s, {PICKUPS} calls: from the 2xx to the trigger "
        f"at Mailmodo p50 {p50:.0f} ms, p90 {p90:.0f} ms, max {latencies[-1]:.0f} ms"
    )


def main() -> int:
    wanted = sys.argv[1:] or ["ingest", "deliver", "pickup"]
    fake = FakeUpstreams()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; logs {WORK}")
    try:
        if "ingest" in wanted:
            for replicas in (1, 2, 4):
                print(ingest(replicas, fake), flush=True)
        if "deliver" in wanted:
            for workers in (1, 3):
                print(deliver(workers, fake), flush=True)
        if "pickup" in wanted:
            print(pickup(fake), flush=True)
    finally:
        fake.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
