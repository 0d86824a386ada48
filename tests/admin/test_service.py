"""The admin service: what operators type (durations, times, cursors), page limits;
reads and actions on both databases: ``test_actions.py``; ``check``: ``tests/test_check.py``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.engine import Engine

from app.admin import insights, service
from app.admin.schemas import Filters
from app.admin.service import AdminError
from app.outbox.counts import CountsSnapshot, OutboxCounts

# --- what operators type -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 2592000), ("12h", 43200), ("90m", 5400), ("3600s", 3600), ("1.5h", 5400)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert service.parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize(
    "text", ["", "30", "d", "3 days", "-1d", "0s", "1y", "\u0661\u0662d", "\uff11\uff12h"]
)
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(AdminError) as err:
        service.parse_duration(text)
    assert err.value.status == 422


def test_parse_when() -> None:
    now = datetime(2026, 1, 31, 12, tzinfo=UTC)
    assert service.parse_when("2h", now) == now - timedelta(hours=2)
    assert service.parse_when("2026-01-30T10:00:00Z") == datetime(2026, 1, 30, 10, tzinfo=UTC)
    assert service.parse_when("2026-01-30T10:00:00") == datetime(2026, 1, 30, 10, tzinfo=UTC)
    assert service.parse_when("2026-01-30T12:00:00+02:00") == datetime(2026, 1, 30, 10, tzinfo=UTC)
    with pytest.raises(AdminError):
        service.parse_when("yesterday")


def test_cursor_round_trip_and_refusals() -> None:
    assert service.decode_cursor(service.encode_cursor(12345)) == 12345
    assert service.decode_cursor(None) is None
    for bad in ("x", "aWQ6", "Zm9vOjE", "%%%"):
        with pytest.raises(AdminError):
            service.decode_cursor(bad)


def test_limit_bounds(engine: Engine) -> None:
    with pytest.raises(AdminError):
        service.list_deliveries(engine, Filters(), limit=0)
    with pytest.raises(AdminError):
        service.list_rejected(engine, limit=501)
    assert service.list_deliveries(engine, Filters(), limit=500).items == []


def test_admin_error_text() -> None:
    assert str(AdminError(409, "cannot cancel", "it is done")) == "cannot cancel: it is done"
    assert str(AdminError(404, "not found")) == "not found"


# --- counts that cannot be taken ----------------------------------------------------------------


def _broken() -> OutboxCounts:
    raise RuntimeError("database is down")


def test_stats_and_overview_answer_503_while_the_outbox_was_never_counted(engine: Engine) -> None:
    """Only with no counts at all; once there are some, a failing recount keeps them
    (tests/outbox/test_counts.py)."""
    snapshot = CountsSnapshot(_broken, 10)
    for read in (service.stats, insights.overview):
        with pytest.raises(AdminError) as err:
            read(engine, snapshot)
        assert err.value.status == 503
        assert err.value.headers == {"Retry-After": "5"}
        assert str(err.value) == "the outbox could not be counted yet: database is down"


def test_without_a_snapshot_stats_count_now(engine: Engine) -> None:
    """The CLI's ``stats``: one read, counted when asked."""
    stats = service.stats(engine)
    assert stats.counted_at <= stats.generated_at
    assert stats.counts_age_seconds < 5
