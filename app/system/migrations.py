"""Alembic, driven from code: ``ctmm-bridge db upgrade`` and the self-upgrade of ``serve``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine

from app.config import Settings


def _migrations_dir() -> Path:
    """``migrations/`` beside the source tree, or the copy packed into an installed wheel."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[2] / "migrations", here.parents[1] / "_migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise RuntimeError("the migrations folder is missing from this installation")


MIGRATIONS_DIR = _migrations_dir()


def alembic_config(settings: Settings) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # '%' is an interpolation character for configparser.
    cfg.set_main_option("sqlalchemy.url", settings.database_url.replace("%", "%%"))
    return cfg


#: The PostgreSQL advisory lock key that serialises ``db upgrade`` runs ("ctmmmigr").
MIGRATION_LOCK_KEY = 0x63746D6D6D696772


def upgrade(settings: Settings, engine: Engine, revision: str = "head") -> None:
    """Bring the database to ``revision``; safe to run on every start, and from several
    processes at once: on PostgreSQL the whole upgrade holds a transaction-scoped advisory
    lock, so a second run waits, then finds the schema at head and does nothing (on SQLite the
    write lock that ``engine.begin`` takes does the same)."""
    cfg = alembic_config(settings)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


@lru_cache
def head_revision() -> str | None:
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    return script.get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return MigrationContext.configure(conn).get_current_revision()
