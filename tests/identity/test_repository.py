"""Identity SQL on SQLite and PostgreSQL: the newest observation of an email wins, and
resolving prefers what this batch learnt over what is stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from app.identity import repository
from app.identity.models import Identity

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def observation(email: str, clevertap_id: str, source: str, at: datetime) -> dict[str, Any]:
    return {"email": email, "clevertap_id": clevertap_id, "source": source, "updated_at": at}


def stored(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(select(Identity.email, Identity.clevertap_id)).all()
    return {str(row[0]): str(row[1]) for row in rows}


def test_the_newest_observation_wins(db: Engine) -> None:
    with db.begin() as conn:
        repository.upsert(
            conn,
            [
                observation("a@example.com", "__a1", "t", T0),
                observation("b@example.com", "__b1", "t", T0),
            ],
        )
    with db.begin() as conn:
        repository.upsert(
            conn,
            [
                observation("a@example.com", "__a2", "t", T0 + timedelta(seconds=1)),
                observation("b@example.com", "__old", "t", T0 - timedelta(seconds=1)),
            ],
        )
    assert stored(db) == {"a@example.com": "__a2", "b@example.com": "__b1"}


def updated_at(engine: Engine, email: str) -> datetime:
    with engine.connect() as conn:
        value = conn.execute(select(Identity.updated_at).where(Identity.email == email)).scalar()
    assert isinstance(value, datetime)
    return value


def test_an_unchanged_pair_is_not_rewritten_within_the_refresh_window(db: Engine) -> None:
    with db.begin() as conn:
        repository.upsert(conn, [observation("a@example.com", "__a", "t", T0)])
    later = T0 + timedelta(hours=repository.REFRESH_HOURS) - timedelta(seconds=1)
    with db.begin() as conn:
        repository.upsert(conn, [observation("a@example.com", "__a", "t", later)])
    assert updated_at(db, "a@example.com") == T0  # no write: the row was left alone

    # Changed: the ID, or the source, is written at once, within the window too.
    with db.begin() as conn:
        repository.upsert(conn, [observation("a@example.com", "__a", "u", later)])
    assert updated_at(db, "a@example.com") == later
    again = later + timedelta(seconds=1)
    with db.begin() as conn:
        repository.upsert(conn, [observation("a@example.com", "__b", "u", again)])
    assert stored(db) == {"a@example.com": "__b"}
    assert updated_at(db, "a@example.com") == again

    # Unchanged but older than the window: confirmed, the time moves.
    refreshed = again + timedelta(hours=repository.REFRESH_HOURS)
    with db.begin() as conn:
        repository.upsert(conn, [observation("a@example.com", "__b", "u", refreshed)])
    assert updated_at(db, "a@example.com") == refreshed
    # And an older observation still changes nothing.
    with db.begin() as conn:
        repository.upsert(conn, [observation("a@example.com", "__old", "u", again)])
    assert stored(db) == {"a@example.com": "__b"}


@pytest.mark.parametrize(
    "t0",
    [
        datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
        datetime(2026, 3, 1, 11, 0, tzinfo=UTC),
        datetime(2026, 3, 1, 12, 7, tzinfo=UTC),
        datetime(2026, 3, 1, 12, 7, 0, 123456, tzinfo=UTC),
    ],
)
def test_a_pair_exactly_refresh_hours_old_is_refreshed(db: Engine, t0: datetime) -> None:
    """PostgreSQL compares exactly; SQLite compared a difference of two julianday() doubles
    with 1/24, which for most instants came out a few 1e-10 days short of it, so a pair
    confirmed exactly an hour later was left alone (whole milliseconds are compared now)."""
    with db.begin() as conn:
        repository.upsert(conn, [observation("a@example.com", "__a", "t", t0)])
    refreshed = t0 + timedelta(hours=repository.REFRESH_HOURS)
    with db.begin() as conn:
        repository.upsert(conn, [observation("a@example.com", "__a", "t", refreshed)])
    assert updated_at(db, "a@example.com") == refreshed


def test_resolve_prefers_what_the_batch_learnt(db: Engine) -> None:
    with db.begin() as conn:
        repository.upsert(
            conn,
            [
                observation("a@example.com", "__stored", "t", T0),
                observation("b@example.com", "__b", "t", T0),
            ],
        )
    learnt = {"a@example.com": observation("a@example.com", "__new", "t", T0)}
    wanted = {"a@example.com", "b@example.com", "nobody@example.com"}
    with db.connect() as conn:
        assert repository.resolve(conn, wanted, learnt) == {
            "a@example.com": "__new",
            "b@example.com": "__b",
        }
        assert repository.resolve(conn, set(), learnt) == {}
