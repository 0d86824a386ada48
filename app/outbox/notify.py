"""PostgreSQL LISTEN/NOTIFY of new due work: the ingest transaction announces, idle workers
(``app.worker.notify``) wake at its commit instead of at their next poll.

``pg_notify`` inside the transaction is delivered only when it commits (and never if it rolls
back), and PostgreSQL folds identical notifications of one transaction into one, so an ingest
batch costs one short statement. SQLite has no such thing: one machine, where the writer
wakes its own process's worker directly and other processes poll.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, text

#: The channel every worker LISTENs on; the payload names the upstreams with new due rows.
CHANNEL = "ctmm_bridge_outbox"

_NOTIFY = text("SELECT pg_notify(:channel, :payload)")


def announce(conn: Connection, upstreams: Iterable[str]) -> None:
    """Tell every listening worker, at this transaction's commit, that ``upstreams`` have new
    due rows (nothing on SQLite, nothing when there are none)."""
    names = sorted(set(upstreams))
    if names and conn.dialect.name == "postgresql":
        conn.execute(_NOTIFY, {"channel": CHANNEL, "payload": ",".join(names)})
