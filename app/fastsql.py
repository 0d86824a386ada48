"""Statements of the ingest hot path run on the SQLite driver's cursor, compiled once.

An execution through SQLAlchemy costs ~100 µs, more than the statement itself on SQLite, and
the ingest writer runs a few per commit. These helpers compile a statement once per dialect
and run it on the same connection (same transaction), converting values with the columns'
own types. PostgreSQL goes through SQLAlchemy as usual. Shared by the outbox and identity
repositories, so neither imports the other for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from operator import itemgetter
from typing import Any

from sqlalchemy import Column, ColumnElement, Connection, Dialect, Enum, Table, literal_column

from app.db import UTCDateTime, sqlite_utc_text

_SQLITE_QUERIES: dict[tuple[int, int], Any] = {}


def sqlite_time(text: str) -> datetime:
    """A timestamp as SQLite holds it (naive UTC text), tolerating hand-written forms."""
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def sqlite_unindexed(column: Column[Any]) -> ColumnElement[Any]:
    """``+table.column`` (SQLite only): the same value, but no index can serve a term written
    with it, so a planner without statistics cannot pick the wrong one for that term."""
    return literal_column(f"+{column.table.name}.{column.name}", type_=column.type)


def sqlite_query(conn: Connection, statement: Any, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Run a SELECT on the driver's cursor, with its SQL compiled once.

    Expanding ``IN`` lists get one ``?`` per value; values and results are what SQLite stores
    (text timestamps), so only plain columns are used.
    """
    cache_key = (id(conn.dialect), id(statement))
    compiled = _SQLITE_QUERIES.get(cache_key)
    if compiled is None:
        compiled = _SQLITE_QUERIES[cache_key] = statement.compile(dialect=conn.dialect)
    sql: str = compiled.string
    args: list[Any] = []
    for name in compiled.positiontup:
        value = params[name] if name in params else compiled.params[name]
        marker = f"__[POSTCOMPILE_{name}]"
        if marker in sql:
            sql = sql.replace(marker, ",".join("?" * len(value)))
            args.extend(value)
        else:
            args.append(value)
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        return list(cursor.execute(sql, args).fetchall())
    finally:
        cursor.close()


@dataclass(frozen=True, slots=True)
class RowInsert:
    """One table's single-row INSERT for SQLite, compiled once: SQL and each value's converter."""

    sql: str
    columns: tuple[tuple[str, Callable[[Any], Any] | None], ...]

    def params(self, rows: list[dict[str, Any]]) -> list[list[Any]]:
        """Each row's values in the statement's order, converted as the column types do."""
        values_of = itemgetter(*(name for name, _ in self.columns))
        converters = [(i, proc) for i, (_, proc) in enumerate(self.columns) if proc is not None]
        params = []
        for row in rows:
            values = list(values_of(row))
            for i, proc in converters:
                values[i] = proc(values[i])
            params.append(values)
        return params


_ROW_INSERTS: dict[tuple[int, int, str, tuple[str, ...]], RowInsert] = {}


def row_insert(
    dialect: Dialect, table: Table, keys: tuple[str, ...], statement: Any = None
) -> RowInsert:
    """``statement`` defaults to the table's plain INSERT (an upsert may be given instead)."""
    cache_key = (id(dialect), id(statement), table.name, keys)
    plan = _ROW_INSERTS.get(cache_key)
    if plan is None:
        insert = table.insert() if statement is None else statement
        compiled = insert.compile(dialect=dialect, column_keys=list(keys))
        order = compiled.positiontup or []
        assert sorted(order) == sorted(keys), (order, keys)
        plan = RowInsert(
            sql=compiled.string,
            columns=tuple(
                (
                    name,
                    _converter(table.c[name].type, dialect),
                )
                for name in order
            ),
        )
        _ROW_INSERTS[cache_key] = plan
    return plan


def _converter(type_: Any, dialect: Dialect) -> Callable[[Any], Any] | None:
    """How a column's value is bound on SQLite: as its type does, minus two costs. Aware
    timestamps become text directly; a ``StrEnum`` member already is its stored text (the
    driver binds a ``str`` subclass as its string), so the enum type's look-up is skipped."""
    if isinstance(type_, UTCDateTime):
        return sqlite_utc_text
    if isinstance(type_, Enum) and issubclass(type_.enum_class or object, StrEnum):
        return None
    processor: Callable[[Any], Any] | None = type_.dialect_impl(dialect).bind_processor(dialect)
    return processor


def sqlite_executemany(conn: Connection, plan: RowInsert, rows: list[dict[str, Any]]) -> None:
    """Run ``plan`` once per row on the driver's cursor."""
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.executemany(plan.sql, plan.params(rows))
    finally:
        cursor.close()


def insert_returning_ids(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> list[int]:
    """Insert ``rows`` (all with the same keys) and return their new ids, in row order.

    PostgreSQL gets one multi-row ``INSERT … RETURNING``. On SQLite, SQLAlchemy cannot match
    a multi-row ``RETURNING`` to its rows and runs one statement per row anyway, at a cost of
    ~100 µs each; here each row is one execution of the same prepared statement on the
    driver's cursor (same transaction, same SQL, values converted by the columns' own types),
    and its id is the cursor's ``lastrowid``.
    """
    if conn.dialect.name != "sqlite":
        return list(
            conn.execute(table.insert().returning(table.c.id, sort_by_parameter_order=True), rows)
            .scalars()
            .all()
        )
    plan = row_insert(conn.dialect, table, tuple(rows[0]))
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    ids: list[int] = []
    try:
        for values in plan.params(rows):
            cursor.execute(plan.sql, values)
            ids.append(cursor.lastrowid)
    finally:
        cursor.close()
    return ids


@dataclass(frozen=True, slots=True)
class SqlitePlan:
    """Any statement for SQLite, compiled once: its SQL and, per ``?``, the parameter's name,
    default (a literal of the statement) and converter (as its type binds it)."""

    sql: str
    binds: tuple[tuple[str, Any, Callable[[Any], Any] | None], ...]

    def args(self, params: dict[str, Any]) -> list[Any]:
        """The positional values of ``params`` (names missing take the statement's value)."""
        values = []
        for name, default, proc in self.binds:
            value = params.get(name, default)
            values.append(value if proc is None or value is None else proc(value))
        return values


_SQLITE_PLANS: dict[tuple[int, int, tuple[str, ...] | None], SqlitePlan] = {}


def sqlite_plan(
    dialect: Dialect, statement: Any, column_keys: tuple[str, ...] | None = None
) -> SqlitePlan:
    """``statement`` compiled for SQLite once (an UPDATE's SET columns may be named with
    ``column_keys``, each bound by the column's name). No expanding ``IN`` lists."""
    cache_key = (id(dialect), id(statement), column_keys)
    plan = _SQLITE_PLANS.get(cache_key)
    if plan is None:
        compiled = statement.compile(
            dialect=dialect, column_keys=list(column_keys) if column_keys is not None else None
        )
        assert "POSTCOMPILE" not in compiled.string, compiled.string
        binds = []
        for name in compiled.positiontup or []:
            bind = compiled.binds[name]
            binds.append((name, compiled.params.get(name), _converter(bind.type, dialect)))
        plan = _SQLITE_PLANS[cache_key] = SqlitePlan(sql=compiled.string, binds=tuple(binds))
    return plan


def driver_cursor(conn: Connection) -> Any:
    """A cursor of ``conn``'s driver connection: the same transaction, none of SQLAlchemy's
    per-execution cost (close it after use)."""
    return conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
