"""Micro-benchmark of ``repository.ingest_batch`` alone: CPU µs per stored call, batches of
256 keyed calls (one delivery and one identity each), on SQLite (synchronous=OFF, so the disk
is not measured) and, if reachable, PostgreSQL. Run it in two checkouts to compare them:

    .venv/bin/python bench/ingest_batch.py          # BENCH_BATCHES (default 60)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

sys.path.insert(0, os.getcwd())

from app.clock import utcnow
from app.db import create_db_engine
from app.outbox import repository
from app.system.migrations import upgrade
from tests.conftest import make_settings
from tests.outbox.test_writer import record

BATCHES = int(os.environ.get("BENCH_BATCHES", "60"))
SIZE = 256
SERVER = os.environ.get(
    "BRIDGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def run(url: str) -> float:
    settings = make_settings(url, sqlite_synchronous="OFF")
    engine = create_db_engine(settings)
    upgrade(settings, engine)
    tag = uuid.uuid4().hex[:6]
    batches = [
        [record(f"{tag}-{b}-{i}@example.com", key=f"{tag}:{b}:{i}") for i in range(SIZE)]
        for b in range(BATCHES)
    ]
    cpu = 0.0
    for batch in batches:
        start = time.process_time()
        with engine.begin() as conn:
            repository.ingest_batch(conn, batch, dedup_window_seconds=3600, now=utcnow())
        cpu += time.process_time() - start
    engine.dispose()
    return cpu / (BATCHES * SIZE) * 1e6


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sqlite_url = f"sqlite:///{Path(tmp) / 'b.db'}"
        print(f"sqlite: {run(sqlite_url):.1f} µs CPU per call")
    name = f"ctmm_ib_{uuid.uuid4().hex[:8]}"
    admin = create_engine(SERVER, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        print(f"postgresql: not reachable ({type(exc).__name__})")
        return
    url = make_url(SERVER).set(database=name).render_as_string(hide_password=False)
    try:
        print(f"postgresql: {run(url):.1f} µs CPU per call (this process only)")
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
