"""``ctmm-bridge db``: backup while writing, current, upgrade under concurrency, and database
errors at start as one line."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import Result
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from app.cli import cli
from app.config import Settings, get_settings
from app.system import repository as system_repo
from app.system.migrations import MIGRATION_LOCK_KEY, current_revision, head_revision

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def db_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, settings: Settings) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("BRIDGE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BRIDGE_DATABASE_URL", settings.database_url)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def run(*args: str, code: int = 0) -> Result:
    result = runner.invoke(cli, list(args))
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    return result


def _beats(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM worker_heartbeats").fetchone()[0])


def test_backup_while_writing(engine: Engine, db_env: None, tmp_path: Path) -> None:
    """The copy is consistent and complete up to a point, and the writer is never refused."""
    stop = threading.Event()
    written: list[int] = []
    errors: list[BaseException] = []

    def write() -> None:
        try:
            n = 0
            while not stop.is_set():
                now = datetime.now(UTC)
                with engine.begin() as conn:
                    system_repo.beat(
                        conn, worker_id=f"w{n}", hostname="h", pid=n, started_at=now, now=now
                    )
                n += 1
                written.append(n)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        deadline = time.monotonic() + 10
        while len(written) < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        backups = [tmp_path / f"backup-{i}.db" for i in range(3)]
        for path in backups:
            result = run("db", "backup", str(path))
            assert "integrity ok" in result.stdout
        before_stop = len(written)
    finally:
        stop.set()
        writer.join(timeout=10)
    assert not errors, errors
    assert len(written) >= before_stop >= 50
    counts = []
    for path in backups:
        with sqlite3.connect(path) as copy:
            assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
            assert copy.execute("SELECT version_num FROM alembic_version").fetchone()[0] == (
                head_revision()
            )
            counts.append(_beats(copy))
        assert not path.with_name(path.name + ".partial").exists()
    # Each copy is a snapshot of a moment during the writes: later copies hold at least as much.
    assert 50 <= counts[0] <= counts[1] <= counts[2] <= len(written)


def test_backup_refuses_to_overwrite_and_postgres(
    engine: Engine, db_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "copy.db"
    target.write_text("keep me")
    assert "exists" in run("db", "backup", str(target), code=2).stderr
    assert target.read_text() == "keep me"
    run("db", "backup", str(target), "--force")
    with sqlite3.connect(target) as copy:
        assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    typo = tmp_path / "bakups" / "copy.db"
    assert "not a directory" in run("db", "backup", str(typo), code=2).stderr
    assert not typo.parent.exists()  # a mistyped directory is not created

    monkeypatch.setenv("BRIDGE_DATABASE_URL", "postgresql://u@db/bridge")
    get_settings.cache_clear()
    assert "pg_dump" in run("db", "backup", str(tmp_path / "pg.db"), code=2).stderr


def test_current(settings: Settings, db_env: None) -> None:
    assert "does not exist" in run("db", "current", code=1).stderr
    with sqlite3.connect(make_url(settings.database_url).database or ""):
        pass  # an empty file: no schema yet
    assert "behind" in run("db", "current", code=1).stdout
    run("db", "upgrade")
    head = head_revision()
    assert run("db", "current").stdout.strip() == f"{head} (head {head}) at head"


def test_an_unreachable_database_is_one_line(db_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    monkeypatch.setenv("BRIDGE_DATABASE_URL", "postgresql://bridge:hunter22@127.0.0.1:9/bridge")
    get_settings.cache_clear()
    for args in (("db", "upgrade"), ("db", "current"), ("credentials",)):
        result = run(*args, code=1)
        assert result.stderr.startswith("database error: postgresql+psycopg://bridge:***@")
        assert result.stderr.count("\n") == 1, result.stderr
        assert "hunter22" not in result.output
        assert "Traceback" not in result.output


def _advisory_waiters(admin: Engine) -> int:
    with admin.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                    "AND ((classid::bigint << 32) | objid::bigint) = :key"
                ),
                {"key": MIGRATION_LOCK_KEY},
            ).scalar_one()
        )


@pytest.mark.postgres
def test_concurrent_upgrades_wait_for_the_migration_lock(
    postgres_server: str, tmp_path: Path
) -> None:
    """Two `db upgrade` processes started together on an empty PostgreSQL database: both wait
    for the lock (held here), then one migrates and the other finds the schema at head."""
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env["BRIDGE_DATABASE_URL"] = postgres_server
    holder = admin.connect()
    holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    procs = []
    try:
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "app.cli", "db", "upgrade"],
                    cwd=tmp_path,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                )
            )
        deadline = time.monotonic() + 20
        while _advisory_waiters(admin) < 2:
            assert time.monotonic() < deadline, "the upgrades did not wait for the lock"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.05)
    finally:
        holder.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
        holder.close()
        outputs = [p.communicate(timeout=30)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    engine = create_engine(postgres_server)
    assert current_revision(engine) == head_revision()
    engine.dispose()
    admin.dispose()
