"""Shared fixtures: a migrated temporary database, the real app over ASGI, faked upstreams.

PostgreSQL tests use the server named by ``BRIDGE_TEST_POSTGRES_URL`` (default: the local
server with trust auth); each test run gets a fresh database that is dropped afterwards.
Without a reachable server they are skipped (one summary line says how to run them), unless
``CI=true``, where that is a failure.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
import structlog
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from app import clock as app_clock
from app import logging as app_logging
from app.clock import ManualClock
from app.config import Settings
from app.db import create_db_engine
from app.main import create_app
from app.state import BridgeState
from app.system.migrations import upgrade

# The upstream clients' pool (app/httppool.py) stands where httpcore's pool stands: respx
# fakes it the same way, at the HTTP boundary.
respx.mocks.HTTPCoreMocker.add_targets("app.httppool.FastPool")

CT_SECRET = "ct-test-secret"
MM_SECRET = "mm-test-secret"
ADMIN_TOKEN = "admin-test-token"
MAILMODO_URL = "https://mailmodo.test"
CLEVERTAP_URL = "https://clevertap.test"
MAILMODO_KEY = "mm-api-key"

PG_URL = os.environ.get(
    "BRIDGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def _postgres_unreachable() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None when the server answers."""
    engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            return None
    except Exception as exc:
        return type(exc).__name__
    finally:
        engine.dispose()


_POSTGRES_SKIPPED: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without a reachable PostgreSQL (and without CI=true, where that fails the run), the
    PostgreSQL tests are deselected and the summary says so in one line."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        return
    postgres = [item for item in items if item.get_closest_marker("postgres")]
    if not postgres or _postgres_unreachable() is None:
        return
    config.hook.pytest_deselected(items=postgres)
    items[:] = [item for item in items if not item.get_closest_marker("postgres")]
    shown = make_url(PG_URL).render_as_string(hide_password=True)
    _POSTGRES_SKIPPED.append(
        f"{len(postgres)} PostgreSQL tests skipped: no server at {shown}. To run them, start "
        "PostgreSQL there with trust auth for 127.0.0.1 or set BRIDGE_TEST_POSTGRES_URL "
        "(with CI=true a missing server fails the run)."
    )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in _POSTGRES_SKIPPED:
        terminalreporter.write_line(line, yellow=True, bold=True)


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "clevertap_webhook_secrets": [CT_SECRET, "ct-rotated-secret"],
        "mailmodo_webhook_secrets": [MM_SECRET],
        "admin_token": ADMIN_TOKEN,
        "mailmodo_api_key": MAILMODO_KEY,
        "mailmodo_api_url": MAILMODO_URL,
        "clevertap_account_id": "TEST-ACCOUNT",
        "clevertap_passcode": "TEST-PASSCODE",
        "clevertap_api_url": CLEVERTAP_URL,
        "embedded_worker": False,
        # When a test turns the embedded worker on, it runs in the app's event loop, where the
        # test can reach it; the worker process has its own tests (tests/worker/test_process.py).
        "embedded_worker_mode": "task",
        "retry_schedule_seconds": [1.0, 2.0, 4.0],
        "mailmodo_rate_per_second": 1000.0,
        "log_format": "console",
        "heartbeat_seconds": 0.2,
        "worker_poll_seconds": 0.05,
        "shutdown_grace_seconds": 1.0,
        # In-process writer: an app per test cannot afford a child process each; the process
        # writer has its own tests (tests/outbox/test_writer_process.py) and the e2e tests.
        "ingest_writer": "thread",
        # No status reads after each send unless a test is about them (tests/consent/).
        "reconcile_schedule_hours": [],
        # /metrics, /admin/stats and the overview count on every read (a documented setting),
        # so a test sees the rows it just made; tests/outbox/test_counts.py runs the app with
        # the snapshot (the default, 10 s), tests/health/test_metrics.py its failures.
        "counts_max_age_seconds": 0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """``configure_logging`` changes process-wide state (structlog's chain and stream, the
    root handlers); a test that ran it (the app, a writer run in-process) left the next tests
    logging into its own, long gone capture, so their output was never seen."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


@pytest.fixture(autouse=True)
def fresh_log_throttle() -> None:
    """Each test starts with no error already logged (``app.logging.log_throttled`` would
    otherwise stay quiet about what an earlier test logged within the interval). Not through
    ``monkeypatch``: an autouse fixture using it would undo the test's own patches only after
    the app's shutdown."""
    app_logging.THROTTLE = app_logging.Throttle()


#: The seed of the jitter draws under the ``clock`` fixture (``clock.seed``).
JITTER_SEED = 20240611


@pytest.fixture
def clock() -> Iterator[ManualClock]:
    """The time every module reads (``utcnow``, the rate limiter) and the jitter source, under
    the test's control: real time that ``clock.advance(seconds)`` moves forward (running apps
    and workers keep seeing time pass); ``clock.freeze()`` stops it; jitter is seeded with
    ``JITTER_SEED`` so its draws can be replayed."""
    manual = ManualClock(ticking=True, seed=JITTER_SEED)
    with app_clock.use(manual):
        yield manual


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throw-away PostgreSQL database for this test session."""
    name = f"ctmm_test_{uuid.uuid4().hex[:10]}"
    # pool_pre_ping: the chaos test restarts the server mid-session (tests/test_chaos.py).
    admin = create_engine(
        PG_URL,
        isolation_level="AUTOCOMMIT",
        pool_pre_ping=True,
        connect_args={"connect_timeout": 5},
    )
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # pragma: no cover - only without a server
        admin.dispose()
        shown = make_url(PG_URL).render_as_string(hide_password=True)
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true and PostgreSQL at {shown} is not reachable: {exc}")
        # One reason for every PostgreSQL test, so `-ra` sums them up in one line.
        pytest.skip(
            f"no PostgreSQL at {shown}; to run these tests start one with trust auth there "
            "or set BRIDGE_TEST_POSTGRES_URL (CI=true makes this a failure)"
        )
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _reset_postgres(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test that asks for it runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'bridge.db'}"
    url: str = request.getfixturevalue("postgres_server")
    _reset_postgres(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'bridge.db'}"


@pytest.fixture
def settings(sqlite_url: str) -> Settings:
    return make_settings(sqlite_url)


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = create_db_engine(settings)
    upgrade(settings, engine)
    yield engine
    engine.dispose()


@pytest.fixture
def db(database_url: str) -> Iterator[Engine]:
    """A migrated database on each backend (``database_url``: SQLite and PostgreSQL)."""
    settings = make_settings(database_url)
    engine = create_db_engine(settings)
    upgrade(settings, engine)
    yield engine
    engine.dispose()


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bridge.test") as c:
            yield c


@pytest.fixture
def state(app: FastAPI, client: httpx.AsyncClient) -> BridgeState:
    """The running app's state (requires ``client`` so the lifespan has started)."""
    bridge: BridgeState = app.state.bridge
    return bridge


@pytest.fixture
def mailmodo() -> Iterator[respx.MockRouter]:
    """Mailmodo's API, faked at the HTTP boundary."""
    with respx.mock(base_url=MAILMODO_URL, assert_all_called=False) as router:
        yield router


@pytest.fixture
def clevertap_api() -> Iterator[respx.MockRouter]:
    """CleverTap's upload API, faked at the HTTP boundary."""
    with respx.mock(base_url=CLEVERTAP_URL, assert_all_called=False) as router:
        yield router


CT_AUTH = {"X-Bridge-Secret": CT_SECRET}


def profiles_body(
    *emails: str | None,
    key_values: dict[str, Any] | None = None,
    single: bool = False,
    **profile_extra: Any,
) -> dict[str, Any]:
    """CleverTap's default 'profile variables' body, one profile per email."""
    profiles = []
    for i, email in enumerate(emails):
        profile: dict[str, Any] = {
            "Identity": f"user-{i}",
            "ObjectId": f"__obj{i}",
            "ProfileData": {"First Name": f"Name{i}"},
        }
        if email is not None:
            profile["Email"] = email
        profile.update(profile_extra)
        profiles.append(profile)
    return {
        "targetId": 1472124953,
        "key_values": key_values or {"PromoCode": "MT50"},
        "profiles": profiles[0] if single else profiles,
    }
