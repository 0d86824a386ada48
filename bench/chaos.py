"""Issue 14's chaos run at full size: 2 API replicas + 3 workers on PostgreSQL, 5,000 calls in
each direction, both upstreams at 30 % 5xx and 10 % 429, kill -9 of a worker and of an API
replica, and a PostgreSQL restart (as root with pg_ctlcluster; else without it, said so).

    .venv/bin/python bench/chaos.py            # BENCH_CALLS (5000), BENCH_LOAD_SECONDS (60)

Uses its own database on BRIDGE_TEST_POSTGRES_URL's server (default: local, trust auth) and
prints the report that bench/RESULTS.md records. The bounded form runs in CI:
tests/test_chaos.py.
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.chaos import run_chaos
from tests.cluster import postgres_restart_command

SERVER = os.environ.get(
    "BRIDGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def main() -> int:
    calls = int(os.environ.get("BENCH_CALLS", "5000"))
    load_seconds = float(os.environ.get("BENCH_LOAD_SECONDS", "60"))
    name = f"ctmm_chaos_{uuid.uuid4().hex[:8]}"
    admin = create_engine(SERVER, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(SERVER).set(database=name).render_as_string(hide_password=False)
    restart = postgres_restart_command()
    work = Path(tempfile.mkdtemp(prefix="ctmm-chaos-"))
    try:
        report = run_chaos(url, work, calls=calls, load_seconds=load_seconds, restart=restart)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    if restart is None:
        print("(no PostgreSQL restart: needs root and pg_ctlcluster)")
    print("\n".join(report.lines()))
    print(f"logs: {work}")
    ok = not report.lost_triggers and not report.lost_events
    ok = ok and report.delivered_after_last_fault is not None
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
