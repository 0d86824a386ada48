"""All SQL on the identity table: learn email <-> CleverTap ID pairs, resolve emails to IDs,
and say which waiting rows an identity resolves (for the release of parked events).

Functions take a ``Connection`` (or ``Session``) opened by the caller and never commit. The
outbox calls them inside its ingest transaction; this module knows no outbox table, so the
release itself (``app.outbox.repository``) passes the email column of the rows it releases.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    ScalarSelect,
    Table,
    and_,
    func,
    literal_column,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db import dialect_name
from app.fastsql import row_insert, sqlite_executemany
from app.identity.models import Identity

Executor = Connection | Session
IDENTITIES = cast(Table, Identity.__table__)


#: An identity observed again unchanged is rewritten only when its ``updated_at`` is older than
#: this: a campaign to known recipients otherwise rewrote one identity row per call (a random
#: page of the table on every commit) to move a timestamp. ``updated_at`` is thus when the
#: pair last changed, or was last confirmed, to within an hour. The price: within that hour a
#: change observed before an unwritten confirmation but committed after it (two replicas on
#: PostgreSQL, a few milliseconds apart) wins, where the confirmation's newer time used to.
REFRESH_HOURS = 1


def _identity_upsert(dialect: str) -> Any:
    ins = postgresql.insert(Identity) if dialect == "postgresql" else sqlite.insert(Identity)
    if dialect == "postgresql":
        stale = ins.excluded.updated_at >= Identity.updated_at + literal_column(
            f"interval '{REFRESH_HOURS} hours'"
        )
    else:  # stored as ISO text: julianday() reads it
        # julianday() holds whole milliseconds but returns days as a double: compare whole
        # milliseconds, or an exact hour comes out a few 1e-10 days short of 1/24.
        stale = func.round(
            (func.julianday(ins.excluded.updated_at) - func.julianday(Identity.updated_at))
            * literal_column("86400000")
        ) >= literal_column(str(REFRESH_HOURS * 3_600_000))
    return ins.on_conflict_do_update(
        index_elements=[Identity.email],
        set_={
            "clevertap_id": ins.excluded.clevertap_id,
            "source": ins.excluded.source,
            "updated_at": ins.excluded.updated_at,
        },
        where=and_(
            ins.excluded.updated_at >= Identity.updated_at,
            or_(
                ins.excluded.clevertap_id != Identity.clevertap_id,
                ins.excluded.source != Identity.source,
                stale,
            ),
        ),
    )


# Built once, not per batch: building a statement and computing its cache key costs more than
# running it on the ingest hot path.
_IDENTITY_UPSERT = {name: _identity_upsert(name) for name in ("postgresql", "sqlite")}


def upsert(conn: Executor, rows: list[dict[str, Any]]) -> None:
    """Learn pairs; the newest observation of an email wins (an older one changes nothing,
    nor does a repeat of the stored pair within ``REFRESH_HOURS``: no write at all).

    Each row: ``email``, ``clevertap_id``, ``source``, ``updated_at`` (all rows alike).
    """
    dialect = dialect_name(conn)
    if isinstance(conn, Connection) and dialect == "sqlite":
        plan = row_insert(conn.dialect, IDENTITIES, tuple(rows[0]), _IDENTITY_UPSERT["sqlite"])
        sqlite_executemany(conn, plan, rows)
        return
    conn.execute(_IDENTITY_UPSERT["postgresql" if dialect == "postgresql" else "sqlite"], rows)


def resolve(conn: Executor, wanted: set[str], learnt: dict[str, dict[str, Any]]) -> dict[str, str]:
    """CleverTap IDs of the ``wanted`` emails: those ``learnt`` in this batch, then stored ones."""
    if not wanted:
        return {}
    known = {e: row["clevertap_id"] for e, row in learnt.items() if e in wanted}
    missing = wanted - known.keys()
    if missing:
        for email, clevertap_id in conn.execute(
            select(Identity.email, Identity.clevertap_id).where(Identity.email.in_(missing))
        ).all():
            known[email] = clevertap_id
    return known


def has_identity(email: ColumnElement[Any]) -> ColumnElement[bool]:
    """Rows keyed by ``email`` that an identity now resolves (set-based, one statement)."""
    return email.in_(select(Identity.email))


def clevertap_id_of(email: ColumnElement[Any]) -> ScalarSelect[Any]:
    """The CleverTap ID learnt for ``email``, as a correlated subquery."""
    return select(Identity.clevertap_id).where(Identity.email == email).scalar_subquery()
