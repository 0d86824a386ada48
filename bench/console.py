"""How fast the console's reads answer with 1,000,000 deliveries on SQLite.

    .venv/bin/python bench/console.py              # builds bench/out/console-1m.db once
    BENCH_ROWS=200000 .venv/bin/python bench/console.py
    BENCH_REBUILD=1 .venv/bin/python bench/console.py

The database is built with bulk inserts on the sqlite3 driver (migrated by Alembic first, so
every index the app has is there while rows go in): 14 days of history, ~3,000 items an hour
plus a burst of 50,000 finished in the last hour, 70 % to Mailmodo. States: 93 % delivered,
2 % failed, 1 % dead, 2 % pending, 1 % parked, 1 % cancelled/dropped; 60 campaigns, 200,000
recipients, one inbound call per 10 items, attempts for failed and dead items, 2,000 rejected
calls. Then every request the console makes is sent through the real app over ASGI (routing,
auth, validation, serialisation included), warmed up, and timed: median and max wall time
and median CPU time of the process over ``BENCH_REPEAT`` runs. CPU time is the number to trust
on a busy machine; wall time includes waiting for a core.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from asgi_lifespan import LifespanManager

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.config import Settings  # noqa: E402
from app.db import create_db_engine  # noqa: E402
from app.main import create_app  # noqa: E402
from app.system.migrations import upgrade  # noqa: E402

ROWS = int(os.environ.get("BENCH_ROWS", "1000000"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "15"))
OUT = ROOT / "bench" / "out"
DB = OUT / f"console-{ROWS // 1000}k.db"
TOKEN = "bench-token"
BURST = min(50_000, ROWS // 20)
REASONS = {
    "failed": [
        (400, 'Mailmodo refused: HTTP 400: {"message": "Invalid email"}'),
        (404, "Mailmodo refused: HTTP 404: campaign not found"),
        (422, "CleverTap rejected the record: invalid evtData"),
    ],
    "dead": [
        (503, "Mailmodo unavailable: HTTP 503 after 8 attempts"),
        (None, "timeout after 15 s (8 attempts)"),
        (500, "CleverTap upload failed: HTTP 500 after 8 attempts"),
    ],
}


def text(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(" ", "microseconds")[:-6]


def pick_state(r: float) -> str:
    for state, upto in (
        ("delivered", 0.93),
        ("failed", 0.95),
        ("dead", 0.96),
        ("pending", 0.98),
        ("parked", 0.99),
        ("cancelled", 0.995),
    ):
        if r < upto:
            return state
    return "dropped"


def build(now: datetime) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm", ".writelock"):
        Path(str(DB) + suffix).unlink(missing_ok=True)
    settings = Settings(_env_file=None, database_url=f"sqlite:///{DB}")  # type: ignore[call-arg]
    engine = create_db_engine(settings)
    upgrade(settings, engine)
    engine.dispose()
    rnd = random.Random(42)
    started = time.perf_counter()
    conn = sqlite3.connect(DB)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    span = timedelta(days=14).total_seconds()
    calls: list[tuple[Any, ...]] = []
    deliveries: list[tuple[Any, ...]] = []
    attempts: list[tuple[Any, ...]] = []
    call_id = 0
    # Created times ascend with ids, like arrival order; the burst is the last BURST rows.
    for i in range(1, ROWS + 1):
        if i <= ROWS - BURST:
            created = now - timedelta(seconds=span * (1 - i / (ROWS - BURST)) + 3600)
        else:
            created = now - timedelta(seconds=3600 * (1 - (i - (ROWS - BURST)) / BURST))
        if i % 10 == 1:
            call_id += 1
            calls.append(
                (call_id, text(created), "clevertap", "clevertap.campaign", "accepted", 200,
                 '{"targetId": 1, "profiles": []}', 10)
            )  # fmt: skip
        to_mailmodo = rnd.random() < 0.7
        state = pick_state(rnd.random())
        if i > ROWS - BURST:
            state = "delivered" if rnd.random() < 0.97 else "failed"
        finished = created + timedelta(seconds=rnd.uniform(0.1, 5))
        updated = finished if state not in ("pending", "parked") else created
        code, reason = (None, None)
        if state in REASONS:
            code, reason = rnd.choice(REASONS[state])
            for n in range(1, (8 if state == "dead" else 1) + 1):
                attempts.append(
                    (i, n, text(created + timedelta(seconds=n)), 120.0, code,
                     "failed" if state == "failed" else "retry", reason, '{"message": "x"}', "w1")
                )  # fmt: skip
        elif state == "parked":
            reason = "waiting for a CleverTap ID for this email"
        email = f"user{rnd.randrange(200_000)}@example.com"
        target = f"campaign-{rnd.randrange(60)}" if to_mailmodo else "MM Email Opened"
        payload = (
            orjson.dumps({"email": email, "data": {"first_name": "Ann"}}).decode()
            if to_mailmodo
            else orjson.dumps({"evtName": target, "evtData": {}, "ts": 1}).decode()
        )
        deliveries.append(
            (i, call_id,
             "clevertap_to_mailmodo" if to_mailmodo else "mailmodo_to_clevertap",
             "mailmodo" if to_mailmodo else "clevertap",
             "campaign.trigger" if to_mailmodo else "event.upload",
             target, email, None if to_mailmodo else f"__ct{i}", payload, state,
             1 if state in REASONS else 0, 0, text(updated), code, reason,
             text(created), text(updated),
             text(finished) if state not in ("pending", "parked") else None)
        )  # fmt: skip
        if len(deliveries) >= 50_000:
            flush(conn, calls, deliveries, attempts)
    flush(conn, calls, deliveries, attempts)
    conn.executemany(
        "INSERT INTO inbound_calls (received_at, source, route, target, status, http_status,"
        " reason, body, body_truncated, item_count, skipped_count)"
        " VALUES (?, 'clevertap', 'clevertap.campaign', 'c', 'rejected', 422, ?, ?, 0, 0, 0)",
        [
            (text(now - timedelta(minutes=i)), "no profile with an email",
             orjson.dumps({"profiles": [{"Email": f"user{i}@example"}]}).decode())
            for i in range(2000)
        ],
    )  # fmt: skip
    conn.executemany(
        "INSERT INTO identities (email, clevertap_id, source, updated_at) VALUES (?, ?, ?, ?)",
        [
            (f"user{n}@example.com", f"__ct{n}", "clevertap.campaign", text(now))
            for n in range(0, 200_000, 2)
        ],
    )
    conn.commit()
    # No ANALYZE: the bridge never runs it, so the planner works without statistics here too.
    conn.close()
    print(f"built {ROWS:,} deliveries in {time.perf_counter() - started:.0f} s: {DB}")


def flush(
    conn: sqlite3.Connection,
    calls: list[tuple[Any, ...]],
    deliveries: list[tuple[Any, ...]],
    attempts: list[tuple[Any, ...]],
) -> None:
    conn.executemany(
        "INSERT INTO inbound_calls (id, received_at, source, route, status, http_status, body,"
        " item_count, body_truncated, skipped_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 0)",
        calls,
    )
    conn.executemany(
        "INSERT INTO deliveries (id, inbound_call_id, direction, upstream, operation, target,"
        " email, clevertap_id, payload, state, attempts, deferrals, next_attempt_at,"
        " last_status_code, reason, created_at, updated_at, finished_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        deliveries,
    )
    conn.executemany(
        "INSERT INTO attempts (delivery_id, number, started_at, duration_ms, status_code,"
        " outcome, error, response_body, worker_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        attempts,
    )
    conn.commit()
    calls.clear()
    deliveries.clear()
    attempts.clear()


def requests(now: datetime) -> list[tuple[str, str, str, Any]]:
    """(label, method, path, params or JSON body): what each console screen asks."""
    two_hours = (now - timedelta(hours=2)).isoformat()
    day = (now - timedelta(days=1)).isoformat()
    deep = ROWS // 2
    return [
        ("overview", "GET", "/admin/overview", None),
        ("stats (CLI, /admin/stats)", "GET", "/admin/stats", None),
        ("failures, all", "GET", "/admin/failures", None),
        ("failures, last 2 h", "GET", "/admin/failures", {"updated_after": two_hours}),
        ("deliveries, newest 50", "GET", "/admin/deliveries", {"limit": 50}),
        ("deliveries, by email", "GET", "/admin/deliveries",
         {"email": "user4242@example.com", "limit": 50}),
        ("deliveries, state=dead", "GET", "/admin/deliveries", {"state": "dead", "limit": 50}),
        ("deliveries, dead in last 2 h", "GET", "/admin/deliveries",
         {"state": "dead", "updated_after": two_hours, "limit": 50}),
        ("deliveries, upstream+state=failed", "GET", "/admin/deliveries",
         {"upstream": "clevertap", "state": "failed", "limit": 50}),
        ("deliveries, campaign", "GET", "/admin/deliveries",
         {"target": "campaign-7", "limit": 50}),
        ("deliveries, campaign+failed", "GET", "/admin/deliveries",
         {"target": "campaign-7", "state": "failed", "limit": 50}),
        ("deliveries, failure group", "GET", "/admin/deliveries",
         {"upstream": "mailmodo", "state": ["failed", "dead"], "status_code": 0,
          "reason": REASONS["dead"][1][1], "limit": 50}),
        ("deliveries, created in last day", "GET", "/admin/deliveries",
         {"created_after": day, "limit": 50}),
        ("worst: campaign nobody has", "GET", "/admin/deliveries",
         {"target": "no-such-campaign", "limit": 50}),
        ("worst: created before 13 days ago", "GET", "/admin/deliveries",
         {"created_before": (now - timedelta(days=13)).isoformat(), "limit": 50}),
        ("deliveries, page at id 500k", "GET", "/admin/deliveries",
         {"cursor": _cursor(deep), "limit": 50}),
        ("delivery detail (dead, 8 attempts)", "GET", "/admin/deliveries/{dead_id}", None),
        ("person", "GET", "/admin/person", {"email": "user4242@example.com"}),
        ("rejected calls", "GET", "/admin/rejected", {"limit": 50}),
        ("replay dry run, dead in 2 h", "POST", "/admin/replay",
         {"states": ["dead"], "updated_after": two_hours, "dry_run": True}),
        ("replay dry run, a failure group", "POST", "/admin/replay",
         {"states": ["failed", "dead"], "upstream": "mailmodo", "status_code": 503,
          "reason": REASONS["dead"][0][1], "dry_run": True}),
    ]  # fmt: skip


def _cursor(last_id: int) -> str:
    from app.admin.service import encode_cursor

    return encode_cursor(last_id)


async def measure() -> list[tuple[str, float, float, float, int]]:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=f"sqlite:///{DB}",
        admin_token=TOKEN,
        embedded_worker=False,
        ingest_writer="thread",
        log_format="json",
    )
    app = create_app(settings)
    now = datetime.now(UTC)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    results = []
    async with LifespanManager(app, startup_timeout=120) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
            dead = await client.get(
                "/admin/deliveries", params={"state": "dead", "limit": 1}, headers=auth
            )
            dead_id = dead.json()["items"][0]["id"]
            for label, method, path, arg in requests(now):
                path = path.format(dead_id=dead_id)
                walls, cpus = [], []
                size = 0
                for n in range(REPEAT + 2):
                    wall0, cpu0 = time.perf_counter(), time.process_time()
                    if method == "GET":
                        resp = await client.get(path, params=arg, headers=auth)
                    else:
                        resp = await client.post(path, json=arg, headers=auth)
                    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
                    assert resp.status_code == 200, (label, resp.text)
                    size = len(resp.content)
                    if n >= 2:  # two warm-ups
                        walls.append(wall * 1000)
                        cpus.append(cpu * 1000)
                results.append(
                    (label, statistics.median(walls), max(walls), statistics.median(cpus), size)
                )
                print(
                    f"{label:38s} wall median {statistics.median(walls):7.1f} ms"
                    f"  max {max(walls):7.1f} ms  cpu median {statistics.median(cpus):7.1f} ms"
                    f"  {size:,} B",
                    flush=True,
                )
    return results


def main() -> None:
    if os.environ.get("BENCH_REBUILD") or not DB.exists():
        build(datetime.now(UTC))
    load0 = os.getloadavg()
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    asyncio.run(measure())
    wall = time.perf_counter() - wall0
    print(
        f"\nrows {ROWS:,}; load average before {load0[0]:.2f}, after {os.getloadavg()[0]:.2f}; "
        f"this process used {(time.process_time() - cpu0) / wall:.2f} of a core over {wall:.0f} s"
    )


if __name__ == "__main__":
    main()
