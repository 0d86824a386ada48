"""How an attempt's ``Outcome`` decides a delivery's fate: the retry schedule and the one
transition function. What an upstream's answer means is decided in its ``outcomes.py``
(``app.mailmodo.outcomes``, ``app.clevertap.outcomes``) on top of ``app.upstream``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from app.clock import jitter
from app.outbox.models import State
from app.outbox.repository import Claimed
from app.upstream import AttemptOutcome, Outcome

#: Longest wait we accept from a Retry-After header, so a bad header cannot park work for days.
MAX_RETRY_AFTER = 6 * 3600.0


@dataclass(frozen=True, slots=True)
class Transition:
    """The new column values of a delivery, and the attempt row that explains them."""

    values: dict[str, Any]
    attempt_number: int
    state: State


class RetryPolicy:
    """Backoff with jitter on a fixed schedule; past its last delay an item is dead."""

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

    def transition(self, claimed: Claimed, outcome: Outcome, now: datetime) -> Transition:
        """The single place where a delivery's state changes after an attempt."""
        number = claimed.attempts + claimed.deferrals + 1
        values: dict[str, Any] = {
            "last_status_code": outcome.status_code,
            "updated_at": now,
            "lease_token": None,
            "leased_by": None,
            # Final states keep "now" here, not the lease deadline, which would read as a
            # next attempt; pending states below set their real due time.
            "next_attempt_at": now,
        }
        kind = outcome.kind
        if kind is AttemptOutcome.DELIVERED:
            values |= {
                "state": State.DELIVERED.value,
                "attempts": claimed.attempts + 1,
                "upstream_ref": outcome.ref,
                "reason": None,
                "finished_at": now,
            }
            return Transition(values, number, State.DELIVERED)
        if kind is AttemptOutcome.FAILED:
            values |= {
                "state": State.FAILED.value,
                "attempts": claimed.attempts + 1,
                "reason": outcome.reason,
                "finished_at": now,
            }
            return Transition(values, number, State.FAILED)
        if kind in (AttemptOutcome.RATE_LIMITED, AttemptOutcome.AUTH_ERROR):
            deferrals = claimed.deferrals + 1
            delay = (
                self.deferral_delay(deferrals, outcome.retry_after)
                if kind is AttemptOutcome.RATE_LIMITED
                else self.pause_probe_seconds
            )
            values |= {
                "state": State.PENDING.value,
                "deferrals": deferrals,
                "reason": outcome.reason,
                "next_attempt_at": now + timedelta(seconds=delay),
            }
            return Transition(values, number, State.PENDING)
        attempts = claimed.attempts + 1
        retry_in = self.retry_delay(attempts, outcome.retry_after)
        if retry_in is None:
            values |= {
                "state": State.DEAD.value,
                "attempts": attempts,
                "finished_at": now,
                "reason": f"gave up after {attempts} attempts; last: {outcome.reason}",
            }
            return Transition(values, number, State.DEAD)
        values |= {
            "state": State.PENDING.value,
            "attempts": attempts,
            "reason": outcome.reason,
            "next_attempt_at": now + timedelta(seconds=retry_in),
        }
        return Transition(values, number, State.PENDING)

    @staticmethod
    def release(now: datetime) -> dict[str, Any]:
        """Give a claimed row back untouched (shutdown, paused upstream): no attempt used."""
        return {"lease_token": None, "leased_by": None, "next_attempt_at": now, "updated_at": now}
