"""Answer latency, side by side: a naive synchronous forwarder vs ``ctmm-bridge serve``, each in
front of the same misbehaving Mailmodo.

    .venv/bin/python bench/forwarder.py        # needs wrk; ~2 minutes

1. The fake Mailmodo (``bench/fake_mailmodo.py``) answers after BENCH_MM_LATENCY_MS (300) ms,
   503 for BENCH_MM_5XX (0.20) of the calls and 429 (Retry-After: 1) for BENCH_MM_429 (0.05),
   and records the email of every call it answered 2xx.
2. (a) ``bench/naive_forwarder.py``: forwards each call and answers when Mailmodo has answered;
   (b) ``ctmm-bridge serve`` at its defaults (embedded worker on, ingest writer process,
   default Mailmodo rate and concurrency unless BENCH_FORWARD_RATE sets the rate) on a fresh
   SQLite file. Both behind uvicorn, one process each.
3. A CleverTap-like client: ``wrk -t2 -c32 -d BENCH_DURATION (30s) --latency`` with
   ``bench/campaign.lua`` and ``Connection: close`` (a new connection per call, 32 at a time,
   a new recipient per call), first against (a), then against (b).
4. After (b), BENCH_SETTLE seconds (30): every delivery id the bridge answered 2xx is looked up:
   delivered (and then its email must be among those the fake answered 2xx), still pending
   (retrying, or waiting for the rate limit), or anything else (reported; there should be none).

Prints one ``FORWARDER_RESULT`` line and writes ``bench/out/forwarder-<stamp>/``. The target
(issue 9, item 7): the bridge's p99 answer < 50 ms with its worker on, whatever Mailmodo does.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
from common import stop, wait_port

ROOT = Path(__file__).resolve().parents[1]
PYTHON = os.environ.get("PYTHON", sys.executable)
DURATION = os.environ.get("BENCH_DURATION", "30s")
SETTLE = float(os.environ.get("BENCH_SETTLE", "30"))
STAMP = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
OUT = Path(os.environ.get("BENCH_OUT", ROOT / "bench" / "out" / f"forwarder-{STAMP}")).resolve()
FAKE_PORT, FWD_PORT, BRIDGE_PORT = 18190, 18191, 18192
SECRET = f"bench-secret-{STAMP}"
FAKE_ENV = {
    "BENCH_FAKE_LATENCY_MS": os.environ.get("BENCH_MM_LATENCY_MS", "300"),
    "BENCH_FAKE_5XX_RATE": os.environ.get("BENCH_MM_5XX", "0.20"),
    "BENCH_FAKE_429_RATE": os.environ.get("BENCH_MM_429", "0.05"),
    "BENCH_FAKE_RECORD": "1",
}
RESULT = re.compile(r"BENCH_RESULT (.*)")


def start(cmd: list[str], log: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            cmd, env=os.environ | env, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT
        )
    wait_port(port, proc, log)
    return proc


def uvicorn(module: str, port: int) -> list[str]:
    quiet = ["--no-access-log", "--log-level", "warning"]
    return [PYTHON, "-m", "uvicorn", module, "--port", str(port), *quiet]


def wrk(port: int, tag: str, ids_file: Path | None) -> dict[str, float]:
    env = os.environ | {
        "BENCH_TAG": tag,
        "BENCH_CLOSE": "1",
        "BENCH_BASIC": base64.b64encode(f"clevertap:{SECRET}".encode()).decode(),
        "BENCH_CAMPAIGN": "bench-forward",
        "BENCH_IDS_FILE": str(ids_file or ""),
    }
    cmd = ["wrk", "-t2", "-c32", "-d", DURATION, "--latency", "-s", "bench/campaign.lua"]
    run = subprocess.run(
        [*cmd, f"http://127.0.0.1:{port}"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    (OUT / f"wrk-{tag}.txt").write_text(run.stdout + run.stderr)
    match = RESULT.search(run.stdout)
    if match is None:
        sys.exit(f"no BENCH_RESULT from wrk:\n{run.stdout}\n{run.stderr}")
    return {k: float(v) for k, v in (kv.split("=") for kv in match.group(1).split())}


def show(name: str, r: dict[str, float]) -> str:
    return (
        f"{name}: {r['ok_rps']:.0f} ok/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
        f"max {r['max_ms']:.1f} ms, non-2xx {r['non2xx']:.0f}, errors {r['errors']:.0f}"
    )


def settle(db: Path, ids: list[int], fake: str) -> dict[str, int]:
    """States of the acknowledged deliveries once they had SETTLE seconds more."""
    deadline = time.monotonic() + SETTLE
    states: dict[str, int] = {}
    while True:
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TEMP TABLE acked (id INTEGER PRIMARY KEY)")
            conn.executemany("INSERT INTO acked VALUES (?)", [(i,) for i in ids])
            states = dict(
                conn.execute(
                    "SELECT COALESCE(d.state, 'missing'), count(*) FROM acked a "
                    "LEFT JOIN deliveries d ON d.id = a.id GROUP BY 1"
                ).fetchall()
            )
            delivered = {
                row[0]
                for row in conn.execute(
                    "SELECT d.email FROM acked a JOIN deliveries d ON d.id = a.id "
                    "WHERE d.state = 'delivered'"
                )
            }
        if states.keys() <= {"delivered"} or time.monotonic() >= deadline:
            break
        time.sleep(2)
    seen = set(httpx.get(f"{fake}/_seen", timeout=30).json())
    states["delivered_not_seen_by_mailmodo"] = len(delivered - seen)
    return states


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    fake_url = f"http://127.0.0.1:{FAKE_PORT}"
    db = OUT / "bridge.db"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            start(
                uvicorn("bench.fake_mailmodo:app", FAKE_PORT), OUT / "fake.log", FAKE_PORT, FAKE_ENV
            )
        )
        procs.append(
            start(
                uvicorn("bench.naive_forwarder:app", FWD_PORT),
                OUT / "forwarder.log",
                FWD_PORT,
                {"FORWARD_TO": fake_url},
            )
        )
        bridge_env = {
            "BRIDGE_DATABASE_URL": f"sqlite:///{db}",
            "BRIDGE_CLEVERTAP_WEBHOOK_SECRETS": SECRET,
            "BRIDGE_MAILMODO_WEBHOOK_SECRETS": f"bench-mm-{STAMP}",
            "BRIDGE_ADMIN_TOKEN": f"bench-admin-{STAMP}",
            "BRIDGE_MAILMODO_API_KEY": "bench-key",
            "BRIDGE_MAILMODO_API_URL": fake_url,
            "BRIDGE_LOG_FORMAT": "json",
        }
        if os.environ.get("BENCH_FORWARD_RATE"):
            bridge_env["BRIDGE_MAILMODO_RATE_PER_SECOND"] = os.environ["BENCH_FORWARD_RATE"]
        serve_cmd = [PYTHON, "-m", "app.cli", "serve", "--host", "127.0.0.1"]
        bridge = start(
            [*serve_cmd, "--port", str(BRIDGE_PORT)], OUT / "serve.log", BRIDGE_PORT, bridge_env
        )
        procs.append(bridge)
        naive = wrk(FWD_PORT, f"fwd-{STAMP}", None)
        print(show("naive forwarder", naive), flush=True)
        ids_file = OUT / "bridge-ids.txt"
        ours = wrk(BRIDGE_PORT, f"bridge-{STAMP}", ids_file)
        print(show("ctmm-bridge serve", ours), flush=True)
        ids = [int(line) for line in ids_file.read_text().split()]
        states = settle(db, ids, fake_url)
        print(f"acknowledged by the bridge: {len(ids)}; after {SETTLE:g} s: {states}")
    finally:
        for proc in reversed(procs):
            if proc.args[:3] == [PYTHON, "-m", "app.cli"]:
                stop(proc)
            else:
                proc.send_signal(signal.SIGTERM)
                proc.wait(10)
    bad = {k: v for k, v in states.items() if k not in ("delivered", "pending") and v}
    line = (
        f"FORWARDER_RESULT duration={DURATION} "
        f"mailmodo_latency_ms={FAKE_ENV['BENCH_FAKE_LATENCY_MS']} "
        f"mm_5xx={FAKE_ENV['BENCH_FAKE_5XX_RATE']} mm_429={FAKE_ENV['BENCH_FAKE_429_RATE']} "
        f"naive_ok_rps={naive['ok_rps']:.0f} naive_p50_ms={naive['p50_ms']:.1f} "
        f"naive_p99_ms={naive['p99_ms']:.1f} naive_max_ms={naive['max_ms']:.1f} "
        f"naive_non2xx={naive['non2xx']:.0f} bridge_ok_rps={ours['ok_rps']:.0f} "
        f"bridge_p50_ms={ours['p50_ms']:.1f} bridge_p99_ms={ours['p99_ms']:.1f} "
        f"bridge_max_ms={ours['max_ms']:.1f} bridge_non2xx={ours['non2xx']:.0f} "
        f"acked={len(ids)} delivered={states.get('delivered', 0)} "
        f"still_pending={states.get('pending', 0)} "
        f"delivered_unseen={states['delivered_not_seen_by_mailmodo']} other={sum(bad.values())} "
        f"p99_target={'MET' if ours['p99_ms'] < 50 else 'NOT_MET'}"
    )
    print(line)
    (OUT / "forwarder.result").write_text(line + "\n")
    return 0 if not bad and states["delivered_not_seen_by_mailmodo"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
