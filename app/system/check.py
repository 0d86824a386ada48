"""The database's live check for ``ctmm-bridge check``: it answers and its schema is at the
latest migration (the upstreams' checks are in their own folders, see ``app.upstreams``)."""

from __future__ import annotations

from app.config import Settings
from app.db import create_db_engine, read_only, shown_url, sqlite_file_missing
from app.errors import short_error
from app.system.migrations import current_revision, head_revision
from app.upstream import CheckResult


def check_database(settings: Settings) -> CheckResult:
    """The database answers and its schema is at the latest migration."""
    shown = shown_url(settings.database_url)
    if sqlite_file_missing(settings):
        return CheckResult(
            "database",
            "warn",
            f"{shown} does not exist yet; `ctmm-bridge serve` creates and migrates it",
        )
    engine = create_db_engine(settings)
    try:
        current = current_revision(read_only(engine))
    except Exception as exc:
        return CheckResult("database", "fail", f"cannot use {shown}: {short_error(exc)}")
    finally:
        engine.dispose()
    head = head_revision()
    if current == head:
        return CheckResult("database", "ok", f"{shown} answers, schema at {head}")
    hint = (
        "`ctmm-bridge serve` migrates it at start"
        if settings.is_sqlite
        else "run `ctmm-bridge db upgrade`"
    )
    return CheckResult(
        "database",
        "warn" if settings.is_sqlite else "fail",
        f"{shown} is at migration {current or 'none'}, not {head}; {hint}",
    )
