"""Time and randomness come from here so tests can freeze the one and seed the other."""

from __future__ import annotations

import random
from datetime import UTC, datetime


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


jitter_rng = random.Random()


def jitter(delay: float, spread: float = 0.2) -> float:
    """Spread a delay by +-``spread`` so retries of many items do not arrive in lock-step."""
    if delay <= 0:
        return 0.0
    return delay * jitter_rng.uniform(1.0 - spread, 1.0 + spread)
