"""``ctmm-bridge db``: upgrade, current, backup; and database errors at start as one line.

An operator who points the bridge at a database that is not there (a PostgreSQL database not
created yet, a server down, a typo in the host) gets one line naming the database and the
cause, with exit code 1, instead of SQLAlchemy's traceback.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import typer
from sqlalchemy import make_url
from sqlalchemy.exc import SQLAlchemyError

from app.cli.context import load_settings
from app.config import Settings
from app.db import create_db_engine, shown_url, sqlite_file_missing
from app.errors import BridgeError, short_error


@contextmanager
def database_errors(settings: Settings) -> Iterator[None]:
    """Turn a database that cannot be used into one line on stderr and exit code 1."""
    try:
        yield
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None)  # the driver's own message, without SQLAlchemy's
        cause = short_error(orig if isinstance(orig, BaseException) else exc)
        hint = "" if settings.is_sqlite else " (README: PostgreSQL set-up)"
        typer.secho(
            f"database error: {shown_url(settings.database_url)}: {cause}{hint}",
            fg="red",
            err=True,
        )
        raise typer.Exit(1) from None
    except BridgeError as exc:  # DatabaseNotReady: the schema is behind
        typer.secho(f"database error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None


def prepare(settings: Settings) -> None:
    """``prepare_database`` (SQLite migrated, PostgreSQL checked), errors as one line."""
    from app.main import prepare_database

    with database_errors(settings):
        prepare_database(settings)


def db_upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Apply the database migrations: once per release, before the new version starts.

    Safe to run from several processes at once (an advisory lock on PostgreSQL).
    Exit codes: 0 done, 1 database unavailable, 2 bad configuration."""
    from app.system.migrations import current_revision, upgrade

    settings = load_settings()
    with database_errors(settings):
        engine = create_db_engine(settings)
        try:
            upgrade(settings, engine, revision)
            typer.echo(
                f"database at {current_revision(engine)} ({shown_url(settings.database_url)})"
            )
        finally:
            engine.dispose()


def db_current() -> None:
    """Print the database's migration revision and the latest this version knows.

    Exit codes: 0 at the latest, 1 behind (run `db upgrade`) or unavailable, 2 bad
    configuration."""
    from app.system.migrations import current_revision, head_revision

    settings = load_settings()
    if sqlite_file_missing(settings):
        typer.secho(f"{shown_url(settings.database_url)} does not exist", fg="red", err=True)
        raise typer.Exit(1)
    with database_errors(settings):
        engine = create_db_engine(settings)
        try:
            current = current_revision(engine)
        finally:
            engine.dispose()
    head = head_revision()
    state = "at head" if current == head else "behind: run `ctmm-bridge db upgrade`"
    typer.echo(f"{current or '(empty)'} (head {head}) {state}")
    if current != head:
        raise typer.Exit(1)


def db_backup(
    path: Path = typer.Argument(..., help="Where to write the copy (a new file)."),
    force: bool = typer.Option(False, "--force", help="Replace PATH if it exists."),
) -> None:
    """Copy the SQLite database to PATH with SQLite's online backup: consistent, and safe
    while `serve` and workers keep writing. For PostgreSQL use pg_dump (README: Backups).

    Exit codes: 0 written, 1 the database cannot be read, 2 bad usage (PostgreSQL, PATH
    exists, its directory does not)."""
    settings = load_settings()
    source = make_url(settings.database_url).database
    if not settings.is_sqlite or not source or source == ":memory:":
        typer.secho(
            "db backup copies an SQLite file; for PostgreSQL use pg_dump (README: Backups)",
            fg="red",
            err=True,
        )
        raise typer.Exit(2)
    if sqlite_file_missing(settings):
        typer.secho(f"{shown_url(settings.database_url)} does not exist", fg="red", err=True)
        raise typer.Exit(1)
    if path.exists() and not force:
        typer.secho(f"{path} exists; choose a new file or add --force", fg="red", err=True)
        raise typer.Exit(2)
    if not path.parent.is_dir():
        # A mistyped directory is not created: the copy would land where nobody looks for it.
        typer.secho(f"{path.parent} is not a directory; create it first", fg="red", err=True)
        raise typer.Exit(2)
    try:
        pages = backup_sqlite(Path(source), path)
    except (sqlite3.Error, OSError) as exc:
        typer.secho(f"backup failed: {short_error(exc)}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"backed up {source} to {path} ({pages} pages, integrity ok)")


def backup_sqlite(source: Path, target: Path) -> int:
    """Copy ``source`` to ``target`` (written beside it, then renamed into place) and check
    the copy; the number of pages copied.

    One backup step copies every page inside a single read transaction: in WAL mode writers
    go on meanwhile, and the copy is the database as of the step's start. (Copying in several
    steps would restart whenever another connection writes, and might never finish under
    steady ingest.)"""
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    src = sqlite3.connect(source, timeout=30)
    try:
        with closing(sqlite3.connect(partial)) as dst:
            src.backup(dst)
            with closing(dst.execute("PRAGMA integrity_check")) as cur:
                verdict = cur.fetchone()
            if verdict is None or verdict[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check of the copy: {verdict}")
            # A backup of a WAL database is in WAL mode too; a single file travels better.
            dst.execute("PRAGMA journal_mode=DELETE")
            with closing(dst.execute("PRAGMA page_count")) as cur:
                pages = int(cur.fetchone()[0])
        with open(partial, "rb") as fh:
            os.fsync(fh.fileno())
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        src.close()
    return pages
