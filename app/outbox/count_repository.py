"""The outbox's counting SQL, for ``/metrics``, ``/admin/stats`` and the console's overview:
written to stay fast when the outbox holds millions of rows (a Mailmodo outage leaves one
pending row per call).

Nothing here reads the table itself (parked emails are counted off their partial index): counts
are index range counts on ``ix_deliveries_due`` (upstream, state, ...), one per (upstream,
state), and the oldest pending item of an upstream is one look-up in the partial index
``ix_deliveries_pending_created``. A count still costs one index entry per row counted (~40 ns
on SQLite, more on PostgreSQL): about 50 ms for a million rows on SQLite, 200-300 ms on
PostgreSQL. So the counts are not taken per request: ``app.outbox.counts`` keeps a snapshot of
them, counted off the request path; only the oldest pending item (one look-up) is read live.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Connection, bindparam, func, literal_column, select, text

from app.outbox.models import Direction, State, Upstream
from app.outbox.repository import DELIVERIES, PARKED_BY_EMAIL, PARKED_INDEX

#: The direction of every row bound for an upstream (the ingest sets both, always in step):
#: counts by direction are counts by upstream, which the due index can count.
DIRECTION_OF: dict[Upstream, Direction] = {
    Upstream.MAILMODO: Direction.CLEVERTAP_TO_MAILMODO,
    Upstream.CLEVERTAP: Direction.MAILMODO_TO_CLEVERTAP,
    Upstream.MAILMOJO: Direction.CLEVERTAP_TO_MAILMOJO,
}

_d = DELIVERIES.c
COUNT_ONE = select(func.count()).where(
    _d.upstream == bindparam("upstream"), _d.state == bindparam("state")
)
# The state as a literal, as the partial index is written: PostgreSQL's generic plans (after a
# statement is prepared) only use a partial index whose condition the query states literally.
OLDEST_PENDING = select(func.min(_d.created_at)).where(
    _d.state == literal_column(f"'{State.PENDING.value}'"), _d.upstream == bindparam("upstream")
)

# Off the partial index of parked emails, never the table: by ``state = ?`` SQLite read every
# parked row (16-21 ms at 30,000); the literal state lets PostgreSQL's generic plans use it.
PARKED_EMAILS = select(func.count(func.distinct(_d.email))).where(
    _d.state == literal_column(f"'{State.PARKED.value}'")
)
SQLITE_PARKED_EMAILS = text(
    f"SELECT count(DISTINCT email) FROM deliveries INDEXED BY {PARKED_INDEX} "  # noqa: S608
    f"WHERE {PARKED_BY_EMAIL}"
)


def counts_by_upstream_and_state(conn: Connection) -> dict[tuple[Upstream, State], int]:
    """Rows per (upstream, state), every pair present (0 when none)."""
    return {
        (upstream, state): int(
            conn.execute(COUNT_ONE, {"upstream": upstream.value, "state": state.value}).scalar_one()
        )
        for upstream in Upstream
        for state in State
    }


def oldest_pending_by_upstream(conn: Connection) -> dict[Upstream, datetime]:
    """When the oldest pending item of each upstream was created (upstreams with none left
    out); the written ``state = 'pending'`` and ``upstream = ?`` let the partial index serve."""
    oldest: dict[Upstream, datetime] = {}
    for upstream in Upstream:
        value = conn.execute(OLDEST_PENDING, {"upstream": upstream.value}).scalar()
        if value is not None:
            oldest[upstream] = value if value.tzinfo else value.replace(tzinfo=UTC)
    return oldest


def delivered_since(conn: Connection, since: datetime) -> int:
    """Deliveries delivered since ``since`` (a delivered row is last updated when delivered):
    a range count on ``ix_deliveries_state_updated_at_upstream``, linear in the rows of that
    window (an hour at a high rate is millions)."""
    stmt = select(func.count()).where(_d.state == State.DELIVERED.value, _d.updated_at >= since)
    return int(conn.execute(stmt).scalar_one())


def parked_emails(conn: Connection) -> int:
    """Distinct emails the parked rows wait for (their CleverTap ID): linear in parked rows,
    read off their partial index."""
    query = SQLITE_PARKED_EMAILS if conn.dialect.name == "sqlite" else PARKED_EMAILS
    return int(conn.execute(query).scalar_one())
