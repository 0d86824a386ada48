"""What the commands share: the settings, the operator's database, and refusals turned into
exit codes (0 done, 1 a finding such as "no such delivery", 2 bad usage or configuration)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.admin.service import AdminError
from app.config import Settings, get_settings
from app.db import create_db_engine, shown_url, sqlite_file_missing
from app.errors import short_error
from app.system.migrations import current_revision, head_revision, upgrade


def load_settings() -> Settings:
    """The settings, or one line naming the bad BRIDGE_* variable and exit code 2."""
    try:
        return get_settings()
    except Exception as exc:  # SettingsError names the variable; anything else its first line
        typer.secho(f"configuration error: {short_error(exc, 500)}", fg="red", err=True)
        raise typer.Exit(2) from None


def admin_fail(exc: AdminError) -> NoReturn:
    """422 is the operator's input (2); anything else is a finding (1)."""
    typer.secho(str(exc), fg="red", err=True)
    raise typer.Exit(2 if exc.status == 422 else 1)


def open_database(settings: Settings) -> Engine:
    """The database named by the settings, for an operator command.

    A missing SQLite file is an error, not created empty (a wrong working directory would
    otherwise show an empty bridge); a SQLite schema behind is migrated as ``serve`` does.
    """
    shown = shown_url(settings.database_url)
    if sqlite_file_missing(settings):
        raise AdminError(
            404,
            "no database",
            f"{shown} does not exist; run where `serve` runs or set BRIDGE_DATABASE_URL",
        )
    engine = create_db_engine(settings)
    try:
        if current_revision(engine) != head_revision():
            if not settings.is_sqlite:
                raise AdminError(
                    503, "database not migrated", f"{shown}: run `ctmm-bridge db upgrade`"
                )
            upgrade(settings, engine)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise AdminError(503, "database unavailable", f"{shown}: {short_error(exc)}") from None
    except AdminError:
        engine.dispose()
        raise
    return engine


@contextmanager
def admin_engine() -> Iterator[Engine]:
    """The database named by the settings (BRIDGE_DATABASE_URL)."""
    try:
        engine = open_database(load_settings())
    except AdminError as exc:
        admin_fail(exc)
    try:
        yield engine
    except AdminError as exc:
        admin_fail(exc)
    finally:
        engine.dispose()
