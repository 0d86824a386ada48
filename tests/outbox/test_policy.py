"""The retry delays (pure, no database).

What an outcome does to a delivery's state: ``tests/outbox/test_transitions.py``; what an
upstream's answer means: ``tests/{mailmodo,clevertap}/test_outcomes.py``."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.clock import ManualClock, jitter
from app.outbox.policy import MAX_RETRY_AFTER, RetryPolicy

SEED = 424242


@pytest.fixture(autouse=True)
def seeded(clock: ManualClock) -> None:
    """Jitter draws start from SEED (through the one clock every module reads)."""
    clock.reseed(SEED)


def draws(*delays: float) -> list[float]:
    """What ``jitter`` gives for ``delays`` right after seeding with SEED."""
    rng = random.Random(SEED)
    return [d * rng.uniform(0.8, 1.2) for d in delays]


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
