"""The one-step SQLite timestamp conversion of the ingest hot path stores exactly what the
typed column (``UTCDateTime`` over SQLAlchemy's SQLite ``DATETIME``) would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite

from app.db import UTCDateTime, sqlite_utc_text

DIALECT = sqlite.dialect()
COLUMN = UTCDateTime()
STORE = COLUMN.dialect_impl(DIALECT).bind_processor(DIALECT)


def typed(value: datetime) -> str:
    # the column's own bind processor: UTCDateTime's conversion, then SQLite DATETIME's
    assert STORE is not None
    return str(STORE(value))


@given(
    st.datetimes(
        min_value=datetime(1000, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
        ),
    )
)
def test_agrees_with_the_typed_column(value: datetime) -> None:
    assert sqlite_utc_text(value) == typed(value)


def test_whole_seconds_keep_their_microseconds_field() -> None:
    value = datetime(2026, 11, 23, 9, 0, 0, tzinfo=UTC)
    assert sqlite_utc_text(value) == "2026-11-23 09:00:00.000000" == typed(value)


def test_none_and_naive() -> None:
    assert sqlite_utc_text(None) is None
    with pytest.raises(ValueError, match="naive"):
        sqlite_utc_text(datetime(2026, 1, 1))
