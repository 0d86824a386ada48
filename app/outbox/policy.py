"""The retry delays: backoff with jitter on a fixed schedule, and how long a throttled or
paused delivery waits. What an upstream's answer means is decided in its ``outcomes.py``
(``app.mailmodo.outcomes``, ``app.clevertap.outcomes``) on top of ``app.upstream``; what an
outcome does to a delivery's state is decided in ``app.outbox.transitions``.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.clock import jitter

#: Longest wait we accept from a Retry-After header, so a bad header cannot park work for days.
MAX_RETRY_AFTER = 6 * 3600.0


class RetryPolicy:
    """Backoff with jitter on a fixed schedule; past its last delay an item is dead.

    Delays only: ``transitions.after_attempt`` turns them into a change of state.
    """

    def __init__(
        self,
        schedule: Sequence[float],
        *,
        pause_probe_seconds: float = 60.0,
        rate_limit_base: float = 5.0,
        rate_limit_cap: float = 600.0,
    ) -> None:
        if not schedule:
            raise ValueError("the retry schedule needs at least one delay")
        self.schedule = tuple(schedule)
        self.pause_probe_seconds = pause_probe_seconds
        self.rate_limit_base = rate_limit_base
        self.rate_limit_cap = rate_limit_cap

    @property
    def max_attempts(self) -> int:
        return len(self.schedule) + 1

    def retry_delay(self, attempts_done: int, retry_after: float | None) -> float | None:
        """Seconds until the next try after ``attempts_done`` attempts; None means dead."""
        if attempts_done > len(self.schedule):
            return None
        delay = jitter(self.schedule[attempts_done - 1])
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
        return delay

    def deferral_delay(self, deferrals_done: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER)
        base = self.rate_limit_base * (2 ** min(deferrals_done - 1, 16))
        return jitter(min(base, self.rate_limit_cap))
