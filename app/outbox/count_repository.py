"""The outbox's counting SQL, for ``/metrics`` and ``/admin/stats``: written to stay fast when
the outbox holds millions of rows (a Mailmodo outage leaves one pending row per call).

Nothing here reads the table itself: counts are index range counts on ``ix_deliveries_due``
(upstream, state, ...), one per (upstream, state), and the oldest pending item of an upstream
is one look-up in the partial index ``ix_deliveries_pending_created``. A count still costs
one index entry per row counted (~40 ns on SQLite): about 50 ms for a million rows.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Connection, bindparam, func, literal_column, select

from app.outbox.models import Direction, State, Upstream
from app.outbox.repository import DELIVERIES

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
