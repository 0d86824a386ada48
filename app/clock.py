"""Time and randomness come from here, through one swappable clock, so tests can move the one
and seed the other without patching modules by name.

Every module keeps calling ``utcnow()`` (and ``epoch()`` where it needs a float, as the rate
limiter does); both read the clock installed by ``use``. Production never installs one: the
system clock reads real time, and ``utcnow`` costs one extra call over ``datetime.now(UTC)``.

Pure timeouts and measured durations (HTTP call latency, lock waits) may keep reading
``time.monotonic``/``time.perf_counter``: they make no decision about due times, leases,
rate slots, parking, retention or dedup windows.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial


class Clock:
    """Real time and an unseeded random source: what production runs on."""

    def __init__(self, seed: int | None = None) -> None:
        self.rng = random.Random(seed)

    def now(self) -> datetime:
        return datetime.now(UTC)

    def epoch(self) -> float:
        return time.time()


class ManualClock(Clock):
    """A clock tests move by hand, with a seeded random source (so jitter can be replayed).

    Frozen (the default): time stands still at ``start`` until ``advance``/``set``.
    Ticking: real time shifted by an offset that ``advance``/``set`` change, for tests where
    real loops (a worker, a running app) must keep seeing time pass.
    """

    def __init__(
        self, start: datetime | None = None, *, ticking: bool = False, seed: int = 20240611
    ) -> None:
        super().__init__(seed)
        self.seed = seed
        real = datetime.now(UTC)
        start = real if start is None else start.astimezone(UTC)
        self._frozen_at: datetime | None = None if ticking else start
        self._offset = start - real

    @property
    def ticking(self) -> bool:
        return self._frozen_at is None

    def now(self) -> datetime:
        if self._frozen_at is not None:
            return self._frozen_at
        return datetime.now(UTC) + self._offset

    def epoch(self) -> float:
        return self.now().timestamp()

    def advance(self, seconds: float) -> datetime:
        """Move time forward (backward if negative); the new "now"."""
        step = timedelta(seconds=seconds)
        if self._frozen_at is not None:
            self._frozen_at += step
        else:
            self._offset += step
        return self.now()

    def set(self, when: datetime) -> None:
        """Jump to ``when`` (frozen or ticking from there)."""
        self.advance((when.astimezone(UTC) - self.now()).total_seconds())

    def freeze(self) -> datetime:
        """Stop time where it is now; returns that moment."""
        self._frozen_at = self.now()
        return self._frozen_at

    def tick(self) -> None:
        """Let real time pass again, from the moment the clock shows now."""
        if self._frozen_at is not None:
            self._offset = self._frozen_at - datetime.now(UTC)
            self._frozen_at = None

    def reseed(self, seed: int) -> None:
        """Restart the jitter draws from ``seed``."""
        self.seed = seed
        self.rng.seed(seed)


SYSTEM = Clock()

_clock: Clock = SYSTEM
# The hot path (ingest stamps every batch) calls through these without any look-up beyond a
# module global: the system clock's readers are the C functions themselves.
_now: Callable[[], datetime] = partial(datetime.now, UTC)
_epoch: Callable[[], float] = time.time

#: The system clock's random source (seeding it works only while no other clock is in use).
jitter_rng = SYSTEM.rng


def current() -> Clock:
    """The clock in use."""
    return _clock


def install(clock: Clock) -> Clock:
    """Make ``clock`` the one every module reads; returns the one it replaces."""
    global _clock, _now, _epoch
    previous = _clock
    _clock = clock
    if clock is SYSTEM:
        _now, _epoch = partial(datetime.now, UTC), time.time
    else:
        _now, _epoch = clock.now, clock.epoch
    return previous


@contextmanager
def use(clock: Clock) -> Iterator[Clock]:
    """``clock`` for the block's duration, then the previous one again."""
    previous = install(clock)
    try:
        yield clock
    finally:
        install(previous)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return _now()


def epoch() -> float:
    """The current time in seconds since the epoch (what ``time.time()`` would say)."""
    return _epoch()


def jitter(delay: float, spread: float = 0.2) -> float:
    """Spread a delay by +-``spread`` so retries of many items do not arrive in lock-step."""
    if delay <= 0:
        return 0.0
    return delay * _clock.rng.uniform(1.0 - spread, 1.0 + spread)
