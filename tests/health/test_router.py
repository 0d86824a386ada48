"""``/healthz`` and ``/readyz`` over ASGI: each readiness check failing on its own, and passing."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import httpx
import pytest
import respx
from alembic import command
from asgi_lifespan import LifespanManager
from sqlalchemy import create_engine, delete, insert, select, text

from app import __version__
from app.clock import utcnow
from app.config import Settings
from app.db import create_db_engine
from app.main import create_app
from app.state import BridgeState
from app.system import repository as system_repo
from app.system.migrations import alembic_config, head_revision, upgrade
from app.system.models import UpstreamState, WorkerHeartbeat
from tests.conftest import CT_AUTH, MAILMODO_URL, make_settings, profiles_body

Checks = dict[str, dict[str, Any]]


def beat(state: BridgeState, age: timedelta = timedelta(0), worker_id: str = "w-test") -> None:
    now = utcnow() - age
    with state.engine.begin() as conn:
        system_repo.beat(
            conn,
            worker_id=worker_id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            started_at=now,
            now=now,
        )


async def readyz(client: httpx.AsyncClient) -> tuple[int, Checks]:
    r = await client.get("/readyz")
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["status"] == ("ready" if r.status_code == 200 else "not ready")
    checks: Checks = body["checks"]
    return r.status_code, checks


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, BridgeState]]:
    if not settings.is_sqlite:
        engine = create_db_engine(settings)
        upgrade(settings, engine)
        engine.dispose()
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bridge.test") as c:
            yield c, app.state.bridge


# --- liveness --------------------------------------------------------------------------------


async def test_healthz_is_200_with_the_version(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "version": __version__}


async def test_head_probes_answer_like_get(client: httpx.AsyncClient, state: BridgeState) -> None:
    """Monitors that probe with HEAD must not read a 405 as "down"; readiness keeps its 503."""
    assert (await client.head("/healthz")).status_code == 200
    assert (await client.head("/readyz")).status_code == 503  # no worker heartbeat yet
    beat(state)
    assert (await client.head("/readyz")).status_code == 200


async def test_healthz_stays_200_when_not_ready(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    with state.engine.begin() as conn:
        conn.execute(text("DELETE FROM alembic_version"))
    assert (await client.get("/readyz")).status_code == 503
    assert (await client.get("/healthz")).status_code == 200


# --- readiness ---------------------------------------------------------------------------------


async def test_ready_with_a_fresh_heartbeat(client: httpx.AsyncClient, state: BridgeState) -> None:
    beat(state)
    status, checks = await readyz(client)
    assert status == 200, checks
    assert checks["database"] == {"ok": True}
    assert checks["migrations"]["ok"] is True
    assert checks["migrations"]["current"] == checks["migrations"]["head"] == head_revision()
    assert checks["worker"]["ok"] is True
    assert checks["worker"]["last_heartbeat"] is not None
    assert checks["mailmodo"]["ok"] is True
    assert checks["mailmodo"]["configured"] is True
    assert all(c["ok"] for c in checks.values())


async def test_not_ready_without_any_worker_heartbeat(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    status, checks = await readyz(client)
    assert status == 503
    assert checks["worker"]["ok"] is False
    assert checks["worker"]["last_heartbeat"] is None
    assert checks["worker"]["embedded"] is False
    assert "ctmm-bridge worker" in checks["worker"]["hint"]
    # the other checks still report
    assert checks["database"]["ok"] is True
    assert checks["migrations"]["ok"] is True


async def test_not_ready_with_a_stale_heartbeat(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    beat(state, age=timedelta(minutes=5))
    status, checks = await readyz(client)
    assert status == 503
    assert checks["worker"]["ok"] is False
    assert checks["worker"]["last_heartbeat"] is not None
    # one fresh worker among stale ones is enough
    beat(state, worker_id="w-fresh")
    status, _ = await readyz(client)
    assert status == 200


async def test_not_ready_while_mailmodo_is_paused(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    beat(state)
    now = utcnow()
    with state.engine.begin() as conn:
        system_repo.set_paused(
            conn,
            "mailmodo",
            reason="Mailmodo answered 401: check BRIDGE_MAILMODO_API_KEY",
            fingerprint=None,
            now=now,
            probe_in=60,
        )
    status, checks = await readyz(client)
    assert status == 503
    assert checks["mailmodo"]["ok"] is False
    assert checks["mailmodo"]["paused"] is True
    assert "401" in checks["mailmodo"]["reason"]
    assert checks["mailmodo"]["paused_since"] is not None
    assert "ctmm-bridge resume mailmodo" in checks["mailmodo"]["hint"]  # what to do
    assert checks["worker"]["ok"] is True

    with state.engine.begin() as conn:
        assert system_repo.clear_paused(conn, "mailmodo", utcnow())
    status, _ = await readyz(client)
    assert status == 200


async def test_an_unpaused_upstream_row_does_not_block(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    beat(state)
    with state.engine.begin() as conn:
        conn.execute(
            insert(UpstreamState).values(upstream="mailmodo", paused=False, updated_at=utcnow())
        )
    status, checks = await readyz(client)
    assert status == 200, checks


async def test_mailmodo_key_missing(sqlite_url: str) -> None:
    """Without BRIDGE_MAILMODO_API_KEY the bridge still takes calls (they are kept), but it is
    not ready as soon as something waits to go to Mailmodo."""
    async with running(make_settings(sqlite_url, mailmodo_api_key=None)) as (client, state):
        beat(state)
        status, checks = await readyz(client)
        assert checks["mailmodo"]["configured"] is False
        assert "BRIDGE_MAILMODO_API_KEY" in checks["mailmodo"]["hint"]
        assert status == 200, checks

        r = await client.post(
            "/clevertap/campaigns/c1", json=profiles_body("a@x.io"), headers=CT_AUTH
        )
        assert r.status_code == 200
        status, checks = await readyz(client)
        assert status == 503
        assert checks["mailmodo"]["ok"] is False
        assert checks["mailmodo"]["configured"] is False


async def test_not_ready_when_the_migration_record_is_gone(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    beat(state)
    with state.engine.begin() as conn:
        conn.execute(text("DELETE FROM alembic_version"))
    status, checks = await readyz(client)
    assert status == 503
    assert checks["migrations"] == {
        "ok": False,
        "current": None,
        "head": head_revision(),
        "hint": "run `ctmm-bridge db upgrade`",
    }
    assert "worker" not in checks


async def test_not_ready_on_an_older_revision(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    beat(state)
    with state.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'older'"))
    status, checks = await readyz(client)
    assert status == 503
    assert checks["migrations"]["current"] == "older"


async def test_not_ready_after_a_downgrade_to_base_and_ready_after_upgrade(
    database_url: str,
) -> None:
    settings = make_settings(database_url)
    async with running(settings) as (client, state):
        beat(state)
        assert (await readyz(client))[0] == 200
        cfg = alembic_config(settings)

        def downgrade() -> None:
            with state.engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.downgrade(cfg, "base")

        await asyncio.to_thread(downgrade)
        status, checks = await readyz(client)
        assert status == 503
        assert checks["migrations"]["ok"] is False
        assert checks["migrations"]["current"] is None

        await asyncio.to_thread(upgrade, settings, state.engine)
        beat(state)
        status, checks = await readyz(client)
        assert status == 200, checks


async def test_not_ready_when_the_database_does_not_answer(
    client: httpx.AsyncClient, state: BridgeState, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = create_engine("sqlite:////nonexistent-dir/for/sure/bridge.db")
    monkeypatch.setattr(state, "engine", broken)
    try:
        status, checks = await readyz(client)
    finally:
        broken.dispose()
    assert status == 503
    assert checks == {"database": {"ok": False, "error": "OperationalError"}}


async def test_ready_with_the_embedded_worker_beating(sqlite_url: str) -> None:
    settings = make_settings(sqlite_url, embedded_worker=True)
    with respx.mock(base_url=MAILMODO_URL, assert_all_called=False):
        async with running(settings) as (client, state):
            status, checks = 503, Checks()
            for _ in range(60):
                status, checks = await readyz(client)
                if status == 200:
                    break
                await asyncio.sleep(0.05)
            assert status == 200, checks
            assert checks["worker"]["embedded"] is True
            with state.engine.connect() as conn:
                workers = conn.execute(select(WorkerHeartbeat.worker_id)).scalars().all()
            assert len(workers) == 1


async def test_a_stopped_worker_forgets_its_heartbeat(sqlite_url: str) -> None:
    settings = make_settings(sqlite_url, embedded_worker=True)
    with respx.mock(base_url=MAILMODO_URL, assert_all_called=False):
        async with running(settings) as (client, _state):
            for _ in range(60):
                if (await client.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
    engine = create_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            left = conn.execute(select(WorkerHeartbeat.worker_id)).scalars().all()
    finally:
        engine.dispose()
    assert left == []


async def test_heartbeat_rows_can_be_cleared(client: httpx.AsyncClient, state: BridgeState) -> None:
    beat(state)
    assert (await readyz(client))[0] == 200
    with state.engine.begin() as conn:
        conn.execute(delete(WorkerHeartbeat))
    assert (await readyz(client))[0] == 503


# --- the ingest writer cannot commit (disk full) -------------------------------------------------


def fill_the_disk(engine: Any) -> Any:
    """Every new connection of ``engine`` sees a full database (SQLite's max_page_count: the
    same SQLITE_FULL a full disk gives); returns the listener, to lift it again."""
    from sqlalchemy import event

    def full(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        pages = cur.execute("PRAGMA page_count").fetchone()[0]
        cur.execute(f"PRAGMA max_page_count = {pages}")
        cur.close()

    event.listen(engine, "connect", full)
    engine.dispose()
    return full


def free_the_disk(engine: Any, listener: Any) -> None:
    from sqlalchemy import event

    event.remove(engine, "connect", listener)
    engine.dispose()


async def test_not_ready_while_the_writer_cannot_commit_and_ready_once_it_can(
    client: httpx.AsyncClient, state: BridgeState, capsys: pytest.CaptureFixture[str]
) -> None:
    beat(state)
    assert (await readyz(client))[0] == 200
    listener = fill_the_disk(state.engine)
    try:
        for i in range(20):
            big = profiles_body(*[f"u{i}-{n}@example.com" for n in range(50)])
            resp = await client.post("/clevertap/campaigns/c1", json=big, headers=CT_AUTH)
            assert resp.status_code == 503, resp.text
        status, checks = await readyz(client)
        assert status == 503
        assert checks["writer"]["ok"] is False
        assert "full" in checks["writer"]["error"]
        assert "cannot commit" in checks["writer"]["hint"]
    finally:
        free_the_disk(state.engine, listener)
    # Nothing else would tell: readiness itself tries a write, and reports ready again.
    beat(state)
    status, checks = await readyz(client)
    assert status == 200, checks
    assert state.writer.health.error is None
    resp = await client.post(
        "/clevertap/campaigns/c1", json=profiles_body("back@example.com"), headers=CT_AUTH
    )
    assert resp.status_code == 200
    out = capsys.readouterr().out
    # 20 failed calls: one line each for the batch and the call, not twenty.
    assert out.count("ingest batch not stored") == 1
    assert out.count("inbound call not stored") == 1
