"""The plan SQLite picks for a statement the app runs, read with EXPLAIN QUERY PLAN from the
statement and parameters exactly as the driver got them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

#: The index that, chosen for a state guard, reads every row in that state from the table.
STATE_WALK = "ix_deliveries_state_updated_at_upstream"


def plans(engine: Engine, work: Callable[[Any], object]) -> list[tuple[str, str]]:
    """(SQL, plan) of every statement ``work(conn)`` ran through SQLAlchemy, in a transaction
    rolled back afterwards."""
    seen: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        seen.append((statement, params))

    out: list[tuple[str, str]] = []
    with engine.connect() as conn:
        event.listen(conn, "before_cursor_execute", capture)
        with conn.begin() as tx:
            work(conn)
            driver = conn.connection.driver_connection
            assert driver is not None
            for statement, params in seen:
                rows = driver.execute(f"EXPLAIN QUERY PLAN {statement}", params).fetchall()
                out.append((statement, " | ".join(str(r[-1]) for r in rows)))
            tx.rollback()
    return out


def only_plan(engine: Engine, work: Callable[[Any], object], table: str) -> str:
    [(sql, plan)] = [(s, p) for s, p in plans(engine, work) if table in s]
    return f"{plan}   <- {sql}"
