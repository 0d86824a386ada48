"""Issue 10, item 7: 100,000 scheduled status reads in the outbox cost ingest and claiming
nothing measurable. Measures, on one database:

* ingest: CPU time per stored campaign call (``build_record`` + ``ingest_batch``, batches of 50,
  one transaction each, as the ingest writer does);
* claim: wall and CPU time of one Mailmodo claim of 10 due triggers through the consent-aware
  claim the worker uses (``Consent.claim_mailmodo``), and through the plain ``claim_due``;

first on an outbox without reads (A), then with 100,000 reads scheduled in the future (B, the
normal case: every send books up to three), then with the same 100,000 reads *due* (C: a read
backlog, e.g. after a Mailmodo outage).

    .venv/bin/python bench/consent_reads.py                       # SQLite in a temp dir
    .venv/bin/python bench/consent_reads.py postgresql+psycopg://postgres@127.0.0.1/bench

CPU times (``time.process_time``) are what to compare on a busy machine; wall times are shown
too. Results: bench/RESULTS.md, "Status reads".

Since migration 0006 a read is only a slot row (``status_read_slots``) until it falls due, and
the claim makes deliveries of due slots no faster than reads are taken: the outbox no longer
holds B's reads scheduled days ahead, nor, except for retries, C's backlog. Both phases are
kept as the bound on what such rows cost where they do exist (a database from before 0006).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from app.clock import utcnow  # noqa: E402
from app.config import Settings  # noqa: E402
from app.consent.service import Consent  # noqa: E402
from app.db import create_db_engine  # noqa: E402
from app.inbound.from_clevertap import build_record, parse_or_reject  # noqa: E402
from app.outbox import repository  # noqa: E402
from app.outbox.models import Operation, Upstream  # noqa: E402
from app.outbox.repository import DELIVERIES  # noqa: E402
from app.system.migrations import upgrade  # noqa: E402

READS = 100_000
INGEST_CALLS = 4_000
BATCH = 50
CLAIMS = 150
CLAIM_SIZE = 10


def _body(i: int, tag: str) -> bytes:
    return orjson.dumps(
        {
            "targetId": 1,
            "key_values": {"PromoCode": "MT50"},
            "profiles": [
                {
                    "Email": f"{tag}{i}@bench.example.com",
                    "ObjectId": f"-g{tag}{i}",
                    "ProfileData": {"First Name": "Ada", "Plan": "gold"},
                }
            ],
        }
    )


def ingest(engine: Engine, tag: str, calls: int) -> float:
    """CPU µs per stored call."""
    records = []
    for i in range(calls):
        body = _body(i, tag)
        parsed = parse_or_reject(orjson.loads(body), Operation.CAMPAIGN_TRIGGER)
        records.append(
            build_record(
                operation=Operation.CAMPAIGN_TRIGGER,
                target="camp-bench",
                parsed=parsed,
                body=body,
                content_type="application/json",
                dedup_key=f"{tag}:{i}",
                request_id=None,
            )
        )
    started = time.process_time()
    for start in range(0, calls, BATCH):
        with engine.begin() as conn:
            repository.ingest_batch(
                conn, records[start : start + BATCH], dedup_window_seconds=3600, now=utcnow()
            )
    return (time.process_time() - started) / calls * 1e6


def claims(engine: Engine, consent: Consent | None) -> dict[str, float]:
    """Wall p50/p99 ms and CPU µs per claim of ``CLAIM_SIZE`` due triggers."""
    walls: list[float] = []
    cpu = 0.0
    for _ in range(CLAIMS):
        w0, c0 = time.perf_counter(), time.process_time()
        with engine.begin() as conn:
            if consent is None:
                rows = repository.claim_due(
                    conn,
                    upstream=Upstream.MAILMODO,
                    limit=CLAIM_SIZE,
                    now=utcnow(),
                    lease_seconds=300,
                    worker_id="bench",
                )
            else:
                rows = consent.claim_mailmodo(
                    conn, limit=CLAIM_SIZE, now=utcnow(), lease_seconds=300, worker_id="bench"
                )
        cpu += time.process_time() - c0
        walls.append((time.perf_counter() - w0) * 1000)
        assert rows, "ran out of due triggers"
    walls.sort()
    return {
        "p50_ms": round(statistics.median(walls), 3),
        "p99_ms": round(walls[int(len(walls) * 0.99) - 1], 3),
        "cpu_us": round(cpu / CLAIMS * 1e6, 1),
    }


def add_reads(engine: Engine, count: int, *, due: bool) -> None:
    now = utcnow()
    when = now - timedelta(minutes=1) if due else now + timedelta(hours=24)
    rows: list[dict[str, Any]] = [
        {
            "inbound_call_id": None,
            "direction": "clevertap_to_mailmodo",
            "upstream": "mailmodo",
            "operation": Operation.CONTACT_STATUS.value,
            "target": "camp-bench",
            "email": f"read{i}@bench.example.com",
            "clevertap_id": f"-gread{i}",
            "payload": '{"email":"x","slot_hours":24,"send":{}}',
            "state": "pending",
            "attempts": 0,
            "deferrals": 0,
            "next_attempt_at": when,
            "created_at": now,
            "updated_at": now,
        }
        for i in range(count)
    ]
    with engine.begin() as conn:
        for start in range(0, count, 10_000):
            conn.execute(DELIVERIES.insert(), rows[start : start + 10_000])


def make_due_reads(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE deliveries SET next_attempt_at = :t WHERE operation = 'contact.status'"),
            {"t": utcnow() - timedelta(minutes=1)},
        )


def phase(engine: Engine, consent: Consent, name: str) -> dict[str, Any]:
    result: dict[str, Any] = {"phase": name}
    result["ingest_cpu_us_per_call"] = round(ingest(engine, name, INGEST_CALLS), 1)
    result["claim_plain"] = claims(engine, None)
    result["claim_consent"] = claims(engine, consent)
    return result


def main() -> int:
    url = sys.argv[1] if len(sys.argv) > 1 else None
    with tempfile.TemporaryDirectory() as tmp:
        url = url or f"sqlite:///{tmp}/consent-bench.db"
        settings = Settings(
            database_url=url,
            sqlite_synchronous="NORMAL",
            reconcile_rate_share=0.2,
            mailmodo_rate_per_second=5,
            _env_file=None,  # type: ignore[call-arg]
        )
        engine = create_db_engine(settings)
        upgrade(settings, engine)
        if not settings.is_sqlite:
            with engine.begin() as conn:
                conn.execute(text("TRUNCATE deliveries, inbound_calls, attempts, rate_slots"))
        consent = Consent.from_settings(settings)
        results = [phase(engine, consent, "a")]
        add_reads(engine, READS, due=False)
        results.append(phase(engine, consent, "b"))
        make_due_reads(engine)
        results.append(phase(engine, consent, "c"))
        engine.dispose()
    labels = {
        "a": "no reads",
        "b": f"{READS:,} reads scheduled (future)",
        "c": f"{READS:,} reads due (backlog)",
    }
    print(
        f"database: {url.split(':', 1)[0]}; {INGEST_CALLS} calls ingested per phase, "
        f"{CLAIMS} claims of {CLAIM_SIZE} per claim kind"
    )
    for r in results:
        print(
            f"{labels[r['phase']]:<34} ingest {r['ingest_cpu_us_per_call']:>7} µs CPU/call | "
            f"claim_due p50 {r['claim_plain']['p50_ms']} ms, {r['claim_plain']['cpu_us']} µs CPU | "
            f"consent claim p50 {r['claim_consent']['p50_ms']} ms p99 "
            f"{r['claim_consent']['p99_ms']} ms, {r['claim_consent']['cpu_us']} µs CPU"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
