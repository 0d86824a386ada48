"""The retry schedule and the one transition function (pure, no database)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.clock import jitter, jitter_rng
from app.outbox.models import State
from app.outbox.policy import MAX_RETRY_AFTER, RetryPolicy
from app.outbox.repository import Claimed
from app.upstream import AttemptOutcome, Outcome

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SEED = 424242


@pytest.fixture(autouse=True)
def seeded() -> Iterator[None]:
    jitter_rng.seed(SEED)
    yield
    jitter_rng.seed()


def draws(*delays: float) -> list[float]:
    """What ``jitter`` gives for ``delays`` right after seeding with SEED."""
    rng = random.Random(SEED)
    return [d * rng.uniform(0.8, 1.2) for d in delays]


def claimed(attempts: int = 0, deferrals: int = 0) -> Claimed:
    return Claimed(
        id=7,
        operation="campaign.trigger",
        target="camp-1",
        email="a@example.com",
        clevertap_id="ct-1",
        payload='{"email":"a@example.com"}',
        attempts=attempts,
        deferrals=deferrals,
        lease_token="token",
    )


def outcome(kind: AttemptOutcome, **kw: Any) -> Outcome:
    values: dict[str, Any] = {"status_code": 500, "reason": "why", "duration_ms": 3.0} | kw
    return Outcome(kind, **values)


# --- RetryPolicy ----------------------------------------------------------------------------


def test_empty_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one delay"):
        RetryPolicy([])


def test_schedule_gives_jittered_delays_then_none() -> None:
    policy = RetryPolicy([5, 30, 120])
    assert policy.max_attempts == 4
    expected = draws(5, 30, 120)
    got = [policy.retry_delay(n, None) for n in (1, 2, 3)]
    assert got == pytest.approx(expected)
    assert policy.retry_delay(4, None) is None
    assert policy.retry_delay(40, None) is None


def test_retry_after_wins_only_when_longer() -> None:
    policy = RetryPolicy([5, 30])
    [first] = draws(5)
    assert policy.retry_delay(1, 1.0) == pytest.approx(first)  # shorter: backoff kept
    assert policy.retry_delay(1, 90.0) == 90.0
    assert policy.retry_delay(1, 10 * MAX_RETRY_AFTER) == MAX_RETRY_AFTER
    assert policy.retry_delay(3, 90.0) is None  # past the schedule even with Retry-After


def test_zero_delays_are_not_jittered() -> None:
    policy = RetryPolicy([0, 0])
    assert policy.retry_delay(1, None) == 0.0
    assert jitter(0) == 0.0
    assert jitter(-1) == 0.0


@given(
    schedule=st.lists(st.floats(min_value=0.001, max_value=1e5), min_size=1, max_size=12),
    done=st.integers(min_value=1, max_value=13),
)
def test_every_delay_stays_within_20_percent(schedule: list[float], done: int) -> None:
    policy = RetryPolicy(schedule)
    delay = policy.retry_delay(done, None)
    if done > len(schedule):
        assert delay is None
    else:
        assert delay is not None
        base = schedule[done - 1]
        assert base * 0.8 <= delay <= base * 1.2


def test_deferral_delay_backs_off_and_caps() -> None:
    policy = RetryPolicy([1], rate_limit_base=5, rate_limit_cap=600)
    expected = draws(5, 10, 20, 40, 600, 600)
    got = [policy.deferral_delay(n, None) for n in (1, 2, 3, 4, 8, 10_000)]
    assert got == pytest.approx(expected)


def test_deferral_delay_honours_retry_after_with_a_cap() -> None:
    policy = RetryPolicy([1])
    assert policy.deferral_delay(3, 2.0) == 2.0  # even shorter than the back-off
    assert policy.deferral_delay(1, 1e9) == MAX_RETRY_AFTER


# --- transition -----------------------------------------------------------------------------

LEASE_CLEARED = {"lease_token": None, "leased_by": None}


def test_delivered_transition() -> None:
    t = RetryPolicy([1, 2]).transition(
        claimed(attempts=1, deferrals=2),
        outcome(AttemptOutcome.DELIVERED, status_code=200, reason=None, ref="r-9"),
        NOW,
    )
    assert t.state is State.DELIVERED
    assert t.attempt_number == 4
    assert t.values == {
        "last_status_code": 200,
        "updated_at": NOW,
        **LEASE_CLEARED,
        "next_attempt_at": NOW,  # not the old lease deadline
        "state": "delivered",
        "attempts": 2,
        "upstream_ref": "r-9",
        "reason": None,
        "finished_at": NOW,
    }


def test_failed_transition() -> None:
    t = RetryPolicy([1]).transition(
        claimed(), outcome(AttemptOutcome.FAILED, status_code=400, reason="bad"), NOW
    )
    assert t.state is State.FAILED
    assert t.attempt_number == 1
    assert t.values["state"] == "failed"
    assert t.values["attempts"] == 1
    assert t.values["reason"] == "bad"
    assert t.values["finished_at"] == NOW
    assert t.values["last_status_code"] == 400
    assert t.values["next_attempt_at"] == NOW  # finished: no future attempt is implied


def test_rate_limited_transition_uses_no_attempt() -> None:
    t = RetryPolicy([1]).transition(
        claimed(attempts=2, deferrals=3),
        outcome(AttemptOutcome.RATE_LIMITED, status_code=429, retry_after=42.0),
        NOW,
    )
    assert t.state is State.PENDING
    assert t.attempt_number == 6
    assert "attempts" not in t.values
    assert t.values["deferrals"] == 4
    assert t.values["next_attempt_at"] == NOW + timedelta(seconds=42)
    assert t.values["state"] == "pending"
    assert t.values["lease_token"] is None


def test_auth_error_transition_waits_for_the_probe_and_uses_no_attempt() -> None:
    t = RetryPolicy([1], pause_probe_seconds=60).transition(
        claimed(attempts=1), outcome(AttemptOutcome.AUTH_ERROR, status_code=401), NOW
    )
    assert t.state is State.PENDING
    assert "attempts" not in t.values
    assert t.values["deferrals"] == 1
    assert t.values["next_attempt_at"] == NOW + timedelta(seconds=60)


def test_retry_transition_schedules_the_next_try() -> None:
    [first] = draws(1)
    t = RetryPolicy([1, 2, 4]).transition(claimed(), outcome(AttemptOutcome.RETRY), NOW)
    assert t.state is State.PENDING
    assert t.values["attempts"] == 1
    assert t.values["reason"] == "why"
    waited = (t.values["next_attempt_at"] - NOW).total_seconds()
    assert waited == pytest.approx(first, abs=1e-6)
    assert "finished_at" not in t.values


def test_retry_after_the_last_delay_is_dead() -> None:
    t = RetryPolicy([1, 2, 4]).transition(
        claimed(attempts=3, deferrals=5), outcome(AttemptOutcome.RETRY, reason="503 again"), NOW
    )
    assert t.state is State.DEAD
    assert t.attempt_number == 9
    assert t.values["attempts"] == 4
    assert t.values["finished_at"] == NOW
    assert t.values["reason"] == "gave up after 4 attempts; last: 503 again"


def test_release_gives_the_row_back_due_now() -> None:
    assert RetryPolicy.release(NOW) == {**LEASE_CLEARED, "next_attempt_at": NOW, "updated_at": NOW}
