"""Build an outbox of a million pending Mailmodo deliveries, fast, and time the queries that
must stay fast at that size. Used by ``bench/backlog.py``; also runnable on its own:

    .venv/bin/python bench/backlog_db.py sqlite:////tmp/backlog.db 1000000
    .venv/bin/python bench/backlog_db.py postgresql+psycopg://postgres@127.0.0.1/backlog 1000000

One real campaign call is stored through the ingest writer's own code (``build_record`` then
``ingest_batch``), so the call's body and the delivery's payload are exactly what the bridge
stores; it is then cloned in SQL (a recursive CTE on SQLite, ``generate_series`` on
PostgreSQL), each clone with its own recipient, dedup key and times, one call per delivery.
Beside the pending backlog: delivered rows (half of them within the last hour), failed, dead,
cancelled, and parked CleverTap events, with an attempt row each for the finished ones.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from app.admin import service as admin  # noqa: E402
from app.admin.schemas import Filters  # noqa: E402
from app.clock import utcnow  # noqa: E402
from app.config import Settings  # noqa: E402
from app.db import create_db_engine  # noqa: E402
from app.health.metrics import OutboxCollector  # noqa: E402
from app.inbound.from_clevertap import build_record, parse_or_reject  # noqa: E402
from app.outbox import repository  # noqa: E402
from app.outbox.counts import CountsSnapshot, count_outbox  # noqa: E402
from app.outbox.models import Operation, Upstream  # noqa: E402
from app.system.migrations import upgrade  # noqa: E402

#: The lower-case token of the sample recipient that every clone replaces with its own.
WHO = "bkwho0"
BODY = (
    '{"targetId":1472124953,"key_values":{"PromoCode":"MT50","Subject":"Your weekly picks"},'
    '"profiles":[{"Email":"%s@bench.example.com","Identity":"%s","ObjectId":"-g%s",'
    '"ProfileData":{"Last Score":308,"First Name":"Ada","Plan":"gold","City":"Pune"}}]}'
)

#: Rows beside the pending backlog, by state (the parked ones are CleverTap events).
EXTRAS = {"delivered": 100_000, "failed": 2_000, "dead": 1_000, "cancelled": 1_000, "parked": 2_000}


def settings_for(url: str) -> Settings:
    return Settings(
        database_url=url,
        clevertap_webhook_secrets="bench-secret",
        mailmodo_webhook_secrets="bench-mm-secret",
        admin_token="bench-admin-token",
        mailmodo_api_key="bench-key",
    )


#: Typed, so PostgreSQL deduces one type for a parameter used twice.
_STATE = "CAST(:state AS VARCHAR)"


def _clone_sql(dialect: str, table: str) -> str:
    """One statement inserting ``:n`` clones numbered ``:first``.. of the sample row."""
    if dialect == "sqlite":
        seq = (
            "WITH RECURSIVE seq(x) AS (SELECT :first UNION ALL SELECT x + 1 FROM seq "
            "WHERE x < :first + :n - 1) "
        )
        at, due = (
            f"strftime('%Y-%m-%d %H:%M:%f', :t0, '+' || ({offset}) || ' seconds') || '000'"
            for offset in ("(x - :first) * :step", "(x - :first) * :step + :due")
        )
        src = "seq"
    else:
        seq = ""
        at = "CAST(:t0 AS timestamptz) + make_interval(secs => (x - :first) * :step)"
        due = "CAST(:t0 AS timestamptz) + make_interval(secs => (x - :first) * :step + :due)"
        src = "generate_series(CAST(:first AS bigint), :first + :n - 1) AS x"
    who = f"'bk' || CAST(x AS {'TEXT' if dialect == 'sqlite' else 'varchar'})"
    if table == "inbound_calls":
        return (
            f"{seq}INSERT INTO inbound_calls (received_at, source, route, target, status, "
            "http_status, reason, dedup_key, content_type, body, body_truncated, item_count, "
            "skipped_count, request_id) "
            f"SELECT {at}, source, route, target, status, http_status, reason, "
            f"'bench-' || {who}, content_type, replace(body, '{WHO}', {who}), body_truncated, "
            f"item_count, skipped_count, NULL FROM {src}, inbound_calls c WHERE c.id = :sample"
        )
    finished = f"CASE WHEN {_STATE} IN ('pending', 'parked') THEN NULL ELSE {at} END"
    return (
        f"{seq}INSERT INTO deliveries (inbound_call_id, direction, upstream, operation, target, "
        "email, clevertap_id, payload, state, attempts, deferrals, next_attempt_at, "
        "lease_token, leased_by, last_status_code, reason, upstream_ref, created_at, "
        "updated_at, finished_at) "
        "SELECT :call0 + x, COALESCE(CAST(:direction AS VARCHAR), direction), "
        "COALESCE(CAST(:upstream AS VARCHAR), upstream), "
        "COALESCE(CAST(:operation AS VARCHAR), operation), target, "
        f"replace(email, '{WHO}', {who}), "
        f"replace(clevertap_id, '{WHO}', {who}), replace(payload, '{WHO}', {who}), {_STATE}, "
        f"CAST(:attempts AS INTEGER), 0, {due}, NULL, NULL, CAST(:status_code AS INTEGER), "
        f"CAST(:reason AS VARCHAR), NULL, {at}, {at}, {finished} "
        f"FROM {src}, deliveries d WHERE d.id = :sample"
    )


def build(url: str, pending: int, *, log: Callable[[str], None] = print) -> dict[str, int]:
    """A fresh outbox at ``url`` (emptied first) with ``pending`` due Mailmodo deliveries."""
    settings = settings_for(url)
    engine = create_db_engine(settings)
    try:
        upgrade(settings, engine)
        dialect = engine.dialect.name
        with engine.begin() as conn:
            for table in ("attempts", "deliveries", "inbound_calls", "identities"):
                conn.execute(text(f"DELETE FROM {table}"))
        started = time.monotonic()
        now = utcnow()
        body = (BODY % (WHO, WHO, WHO)).encode()
        parsed = parse_or_reject(orjson.loads(body), Operation.CAMPAIGN_TRIGGER)
        record = build_record(
            operation=Operation.CAMPAIGN_TRIGGER,
            target="bench-backlog",
            parsed=parsed,
            body=body,
            content_type="application/json",
            dedup_key=f"bench-sample-{now.timestamp()}",
            request_id=None,
        )
        with engine.begin() as conn:
            (result,) = repository.ingest_batch(conn, [record], dedup_window_seconds=0, now=now)
        sample_call, (sample_delivery,) = result.call_id, result.delivery_ids
        # (state, rows, spread over seconds before now, due offset, attempts, status, reason,
        #  upstream/operation/direction override)
        plan: list[tuple[str, int, float, float, int, int | None, str | None, str | None]] = [
            ("delivered", EXTRAS["delivered"], 7200, 0, 1, 200, None, None),
            ("failed", EXTRAS["failed"], 7200, 0, 1, 400, "Mailmodo refused: 400", None),
            ("dead", EXTRAS["dead"], 7200, 0, 8, 503, "gave up after 8 attempts", None),
            ("cancelled", EXTRAS["cancelled"], 7200, 0, 0, None, "cancelled by operator", None),
            ("parked", EXTRAS["parked"], 7200, 72 * 3600, 0, None, "no CleverTap ID", "ct"),
            ("pending", pending, 3 * 3600, 0, 0, None, None, None),
        ]
        counts: dict[str, int] = {}
        first = 1
        for state, n, spread, due, attempts, status, reason, other in plan:
            if n <= 0:
                continue
            t0 = now - timedelta(seconds=spread + 60)
            params: dict[str, Any] = {
                "first": first,
                "n": n,
                "t0": t0.replace(tzinfo=None).isoformat(" ") if dialect == "sqlite" else t0,
                "step": spread / n,
                "due": due,
                "sample": sample_call,
            }
            with engine.begin() as conn:
                last_call = conn.execute(text("SELECT COALESCE(MAX(id), 0) FROM inbound_calls"))
                call0 = int(last_call.scalar_one())
                conn.execute(text(_clone_sql(dialect, "inbound_calls")), params)
                conn.execute(
                    text(_clone_sql(dialect, "deliveries")),
                    params
                    | {
                        "sample": sample_delivery,
                        "call0": call0 - first + 1,
                        "state": state,
                        "attempts": attempts,
                        "status_code": status,
                        "reason": reason,
                        "upstream": Upstream.CLEVERTAP.value if other else None,
                        "operation": Operation.EVENT_UPLOAD.value if other else None,
                        "direction": "mailmodo_to_clevertap" if other else None,
                    },
                )
                if attempts:
                    conn.execute(
                        text(
                            "INSERT INTO attempts (delivery_id, number, started_at, duration_ms, "
                            "status_code, outcome, error, response_body, worker_id) "
                            f"SELECT id, 1, updated_at, 12.5, last_status_code, {_STATE}, reason, "
                            f"NULL, 'bench' FROM deliveries WHERE state = {_STATE}"
                        ),
                        {"state": state},
                    )
            counts[state] = n
            first += n
            log(f"  {state}: {n:,} rows ({time.monotonic() - started:.0f} s)")
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM deliveries WHERE id = :id"), {"id": sample_delivery})
            conn.execute(text("DELETE FROM inbound_calls WHERE id = :id"), {"id": sample_call})
        if dialect == "sqlite":
            raw = sqlite3.connect(engine.url.database or "", isolation_level=None)
            raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            raw.close()
        else:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE deliveries"))
                conn.execute(text("VACUUM ANALYZE inbound_calls"))
                conn.execute(text("VACUUM ANALYZE attempts"))
        counts["seconds"] = int(time.monotonic() - started)
        return counts
    finally:
        engine.dispose()


def timed(fn: Callable[[], object], samples: int) -> dict[str, float]:
    """Milliseconds per call, wall (median, max) and CPU of this process (median): the CPU
    figure holds on a busy machine, the wall one does not (one warm-up call first)."""
    fn()
    walls, cpus = [], []
    for _ in range(samples):
        t, c = time.perf_counter(), time.process_time()
        fn()
        cpus.append((time.process_time() - c) * 1000)
        walls.append((time.perf_counter() - t) * 1000)
    return {
        "p50_ms": statistics.median(walls),
        "max_ms": max(walls),
        "cpu_ms": statistics.median(cpus),
    }


def claim_once(engine: Engine, limit: int) -> Callable[[], object]:
    """The worker's claim, rolled back: the rows stay due for the next sample."""

    def claim() -> object:
        with engine.connect() as conn:
            rows = repository.claim_due(
                conn,
                upstream=Upstream.MAILMODO,
                limit=limit,
                now=utcnow(),
                lease_seconds=300,
                worker_id="bench",
            )
            assert len(rows) == limit, f"claimed {len(rows)} of {limit}"
            conn.rollback()
        return rows

    return claim


def measure(url: str, samples: int = 10) -> dict[str, dict[str, float]]:
    """In-process query latencies against the outbox at ``url``. The collector and the stats
    read a counts snapshot at the default max age, as ``serve`` does (the warm-up call waits for
    its first count); ``outbox_count`` is what one refresh of it costs, off the request path."""
    settings = settings_for(url)
    engine = create_db_engine(settings)
    counts = CountsSnapshot(partial(count_outbox, engine), settings.counts_max_age_seconds)
    collector = OutboxCollector(engine, counts)
    try:
        return {
            "claim_1": timed(claim_once(engine, 1), samples),
            "claim_100": timed(claim_once(engine, 100), samples),
            "outbox_count": timed(lambda: count_outbox(engine), samples),
            "metrics_collect": timed(lambda: list(collector.collect()), samples),
            "admin_stats": timed(lambda: admin.stats(engine, counts), samples),
            "admin_list_pending": timed(
                lambda: admin.list_deliveries(engine, Filters(states=["pending"]), limit=50),
                samples,
            ),
        }
    finally:
        counts.close(5)
        engine.dispose()


def main() -> int:
    url = sys.argv[1]
    pending = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    if os.environ.get("BENCH_REUSE") != "1":
        print(f"building {pending:,} pending deliveries at {url}")
        print(build(url, pending))
    for name, figures in measure(url).items():
        print(
            f"{name:20} p50 {figures['p50_ms']:8.1f} ms  max {figures['max_ms']:8.1f} ms  "
            f"cpu {figures['cpu_ms']:8.1f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
