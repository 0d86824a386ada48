"""Alembic from empty on SQLite and PostgreSQL: head is reached, the schema matches the models
(no drift), and downgrade to base then upgrade again works."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine

from app.config import Settings
from app.db import create_db_engine
from app.main import DatabaseNotReady, prepare_database
from app.models import Base
from app.system.migrations import (
    MIGRATIONS_DIR,
    alembic_config,
    current_revision,
    head_revision,
    upgrade,
)
from tests.conftest import make_settings

TABLES = {
    "attempts",
    "consent_log",
    "consent_states",
    "status_read_slots",
    "deliveries",
    "generated_secrets",
    "identities",
    "inbound_calls",
    "rate_slots",
    "upstream_states",
    "worker_heartbeats",
}


@pytest.fixture
def settings_any(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture
def empty(settings_any: Settings) -> Iterator[Engine]:
    engine = create_db_engine(settings_any)
    yield engine
    engine.dispose()


def tables(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(inspect(conn).get_table_names())


def drift(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diffs: list[Any] = compare_metadata(context, Base.metadata)
    return diffs


def downgrade(settings: Settings, engine: Engine, revision: str = "base") -> None:
    cfg = alembic_config(settings)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def test_there_is_exactly_one_head() -> None:
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    assert len(script.get_heads()) == 1
    assert head_revision() == script.get_current_head()
    # every revision can be walked from head to base
    revisions = list(script.walk_revisions())
    assert revisions[-1].down_revision is None


def test_upgrade_from_empty_reaches_head(settings_any: Settings, empty: Engine) -> None:
    assert current_revision(empty) is None
    assert tables(empty) == set()
    upgrade(settings_any, empty)
    assert current_revision(empty) == head_revision()
    assert tables(empty) == TABLES | {"alembic_version"}
    assert set(Base.metadata.tables) == TABLES


def test_schema_matches_the_models(settings_any: Settings, empty: Engine) -> None:
    upgrade(settings_any, empty)
    assert drift(empty) == []


def test_upgrade_is_idempotent(settings_any: Settings, empty: Engine) -> None:
    upgrade(settings_any, empty)
    upgrade(settings_any, empty)
    assert current_revision(empty) == head_revision()
    with empty.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1


def test_downgrade_to_base_and_up_again(settings_any: Settings, empty: Engine) -> None:
    upgrade(settings_any, empty)
    with empty.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO identities (email, clevertap_id, source, updated_at) "
                "VALUES ('a@x.io', '__a', 'test', CURRENT_TIMESTAMP)"
            )
        )
    downgrade(settings_any, empty)
    assert current_revision(empty) is None
    assert tables(empty) <= {"alembic_version"}
    upgrade(settings_any, empty)
    assert current_revision(empty) == head_revision()
    assert tables(empty) == TABLES | {"alembic_version"}
    assert drift(empty) == []
    with empty.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM identities")).scalar_one() == 0


def test_going_back_before_0006_turns_scheduled_reads_into_read_deliveries(
    settings_any: Settings, empty: Engine
) -> None:
    """Revision 0005 books every read as a delivery at once: a downgrade makes each read still
    only scheduled that delivery, due when its slot is, so none is lost; going up again
    leaves it a delivery, so none is read twice."""
    from datetime import UTC, datetime, timedelta

    from app.consent import repository as consent_repo
    from app.outbox.models import Delivery, Operation
    from tests.factories import all_deliveries

    upgrade(settings_any, empty)
    sent = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    with empty.begin() as conn:
        consent_repo.book_slots(
            conn,
            [
                consent_repo.SlotBooking(
                    email="a@x.io",
                    slot_seconds=slot * 3600,
                    due_at=sent + timedelta(hours=slot),
                    send_delivery_id=7,
                    send_operation="campaign.trigger",
                    target="camp-1",
                    clevertap_id="__a",
                    sent_at=sent,
                )
                for slot in (1, 24)
            ],
            sent,
        )
    downgrade(settings_any, empty, "0005")
    reads: list[Delivery] = sorted(all_deliveries(empty), key=lambda d: d.next_attempt_at)
    assert [(d.operation, d.state.value, d.email, d.clevertap_id, d.target) for d in reads] == [
        (Operation.CONTACT_STATUS.value, "pending", "a@x.io", "__a", "camp-1")
    ] * 2
    assert [d.next_attempt_at for d in reads] == [sent + timedelta(hours=h) for h in (1, 24)]
    payload = json.loads(reads[0].payload)
    assert (payload["email"], payload["slot_hours"]) == ("a@x.io", 1)
    assert payload["send"]["delivery_id"] == 7
    assert payload["send"]["target"] == "camp-1"
    with empty.connect() as conn:
        linked = conn.execute(
            text("SELECT delivery_id FROM status_read_slots ORDER BY slot_seconds")
        ).scalars()
        assert list(linked) == [d.id for d in reads]
    upgrade(settings_any, empty)
    with empty.connect() as conn:
        assert consent_repo.due_slots(conn, sent + timedelta(days=30), 10) == []


def test_every_step_goes_down_and_up(settings_any: Settings, empty: Engine) -> None:
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    revisions = [r.revision for r in reversed(list(script.walk_revisions()))]
    for revision in revisions:
        upgrade(settings_any, empty, revision)
        assert current_revision(empty) == revision
    for revision in reversed(revisions):
        down = script.get_revision(revision).down_revision
        downgrade(settings_any, empty, down if isinstance(down, str) else "base")
    assert current_revision(empty) is None


def test_offline_sql_can_be_generated(
    settings_any: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    command.upgrade(alembic_config(settings_any), "head", sql=True)
    sql = capsys.readouterr().out
    for table in TABLES:
        assert f"CREATE TABLE {table}" in sql


def test_sqlite_is_brought_to_head_by_the_app(sqlite_url: str) -> None:
    settings = make_settings(sqlite_url)
    prepare_database(settings)
    engine = create_db_engine(settings)
    try:
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgres_must_be_migrated_explicitly(postgres_server: str) -> None:
    from tests.conftest import _reset_postgres

    _reset_postgres(postgres_server)
    settings = make_settings(postgres_server)
    with pytest.raises(DatabaseNotReady, match="ctmm-bridge db upgrade"):
        prepare_database(settings)
    engine = create_db_engine(settings)
    try:
        upgrade(settings, engine)
        prepare_database(settings)  # at head now: no complaint
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()
