"""Delivering Mailmojo contact syncs: claim, then per row read -> decide -> write, under the
lease, at the shared Mailmojo rate.

Self-contained on purpose (the same shape as ``MailmodoDeliverer``: ``run_once``, ``deliver``,
``record``), so the worker loop treats it like any other consumer. One attempt is:

1. read the contact (``GET /v1/contacts/{email}/``) at a rate slot; an answer that does not
   clearly say "this contact" or "no such contact" ends the attempt without a write;
2. decide the write by the contact rules (``app.mailmojo.bodies.decide``); nothing to change
   ends the attempt as delivered (``ref`` ``unchanged``) — a replay writes nothing;
3. write at a second rate slot, but only if the lease still outlasts the whole call: a row whose
   lease could have moved to another worker is given back unsent instead.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import structlog
from sqlalchemy.engine import Engine

from app.clock import utcnow
from app.mailmojo.bodies import SyncPlan, decide
from app.mailmojo.client import MailmojoClient
from app.mailmojo.outcomes import (
    classify_contact_read,
    classify_failure,
    classify_write,
    unchanged,
)
from app.metrics import observe_attempt
from app.outbox import repository, transitions
from app.outbox.models import State, Upstream
from app.outbox.policy import RetryPolicy
from app.outbox.repository import Claimed
from app.outbox.transitions import AttemptChange
from app.upstream import AttemptOutcome, Outcome, UpstreamError
from app.worker.consumer import OutboxConsumer, RunStats
from app.worker.ratelimit import SharedRateLimiter, wait_until

log = structlog.get_logger(__name__)

#: The shared rate slot clock's name (``rate_slots`` row).
RATE_NAME = "mailmojo"


class GiveBack(Exception):
    """Release the row unsent: writing now could race another worker or a shutdown."""


class MailmojoDeliverer(OutboxConsumer):
    """Delivers Mailmojo outbox rows (contact syncs); one instance per worker process."""

    upstream = Upstream.MAILMOJO

    def __init__(
        self,
        *,
        engine: Engine,
        client: MailmojoClient,
        policy: RetryPolicy,
        limiter: SharedRateLimiter,
        worker_id: str,
        lease_seconds: float,
        key_fingerprint: str | None,
        pause_probe_seconds: float,
    ) -> None:
        super().__init__(
            engine=engine,
            policy=policy,
            worker_id=worker_id,
            lease_seconds=lease_seconds,
            key_fingerprint=key_fingerprint,
            pause_probe_seconds=pause_probe_seconds,
        )
        self.client = client
        self.limiter = limiter

    async def run_once(self, limit: int, stop: asyncio.Event | None = None) -> RunStats:
        """Claim up to ``limit`` due rows and deliver them concurrently."""
        claimed = await asyncio.to_thread(self.claim, limit)
        stats = RunStats(claimed=len(claimed))
        if not claimed:
            return stats
        slots = await self.limiter.reserve(len(claimed))
        results = await asyncio.gather(
            *(self.deliver(row, slot, stop) for row, slot in zip(claimed, slots, strict=True))
        )
        for result in results:
            if result is None:
                stats.released += 1
            else:
                stats.count(result.state.value)
        return stats

    async def deliver(
        self, row: Claimed, slot: float, stop: asyncio.Event | None = None
    ) -> AttemptChange | None:
        """Sync one claimed row, its read at ``slot``; None if it was given back unsent."""
        try:
            if not await wait_until(slot, stop):
                raise GiveBack("stopping before the contact read")
            if not self._time_left(row):
                raise GiveBack("lease too short for the contact read")
            outcome = await self.attempt(row, stop)
        except GiveBack as back:
            log.warning("given back unsent", delivery_id=row.id, why=str(back))
            await asyncio.to_thread(self.release, [row])
            return None
        except asyncio.CancelledError:
            await asyncio.shield(asyncio.to_thread(self.release, [row]))
            raise
        except Exception as exc:
            # Never let a row die with its task: record a retry, so attempts count up to dead.
            log.exception("Mailmojo sync failed unexpectedly", delivery_id=row.id)
            outcome = Outcome(
                AttemptOutcome.RETRY, None, f"unexpected error: {type(exc).__name__}: {exc}", 0.0
            )
        return await asyncio.to_thread(self.record, row, outcome)

    def _time_left(self, row: Claimed) -> bool:
        """Whether the lease outlasts a whole call (its timeout) with a margin."""
        if row.leased_until is None:
            return True
        margin = timedelta(seconds=self.client.timeout + 5)
        return utcnow() + margin < row.leased_until

    async def attempt(self, row: Claimed, stop: asyncio.Event | None = None) -> Outcome:
        """Read, decide, write (see the module doc); the outcome of the last call made."""
        plan = SyncPlan.from_json(row.payload)
        try:
            got = await self.client.get_contact(plan.email)
            existing = classify_contact_read(got, plan.email)
            if isinstance(existing, Outcome):
                return await self._held_off(existing)
            write = decide(plan, existing)
            if write is None:
                return unchanged(got)
            slot = (await self.limiter.reserve(1))[0]
            if not await wait_until(slot, stop):
                raise GiveBack("stopping before the contact write")
            if not self._time_left(row):
                raise GiveBack("lease too short for the contact write after the read")
            if write.kind == "subscribe":
                response = await self.client.subscribe(plan.list_id, write.body)
            else:
                response = await self.client.update_contact(plan.email, write.body)
        except UpstreamError as exc:
            return classify_failure(exc)
        return await self._held_off(classify_write(response, write.kind))

    async def _held_off(self, outcome: Outcome) -> Outcome:
        """A 429 with ``Retry-After`` holds every worker's Mailmojo calls off that long."""
        if outcome.kind is AttemptOutcome.RATE_LIMITED and outcome.retry_after:
            await self.limiter.hold_off(outcome.retry_after)
        return outcome

    def record(self, row: Claimed, outcome: Outcome) -> AttemptChange:
        """Write the attempt and the transition in one transaction, under the lease."""
        now = utcnow()
        transition = transitions.after_attempt(row, outcome, now, self.policy)
        with self.engine.begin() as conn:
            repository.add_attempt(
                conn,
                {
                    "delivery_id": row.id,
                    "number": transition.attempt_number,
                    "started_at": now - timedelta(seconds=outcome.duration_ms / 1000),
                    "duration_ms": outcome.duration_ms,
                    "status_code": outcome.status_code,
                    "outcome": outcome.kind.value,
                    "error": outcome.reason,
                    "response_body": outcome.response_body,
                    "worker_id": self.worker_id,
                },
            )
            kept = repository.update_leased(conn, row, transition)
            self.gate.observe(conn, outcome, now)
        observe_attempt(
            self.upstream.value, outcome.kind.value, transition.state.value, outcome.duration_ms
        )
        _log_outcome(row, outcome, transition, lease_kept=kept)
        return transition


def _log_outcome(
    row: Claimed, outcome: Outcome, transition: AttemptChange, *, lease_kept: bool
) -> None:
    fields = {
        "upstream": Upstream.MAILMOJO.value,
        "delivery_id": row.id,
        "operation": row.operation,
        "status_code": outcome.status_code,
        "outcome": outcome.kind.value,
        "write": outcome.ref,
        "state": transition.state.value,
        "duration_ms": outcome.duration_ms,
    }
    if not lease_kept:
        log.warning(
            "lease lost before the result was written; another worker owns the row", **fields
        )
    elif outcome.kind is AttemptOutcome.AUTH_ERROR:
        log.error(
            "Mailmojo rejected the API token; contact syncs are paused until it works",
            reason=outcome.reason,
            **fields,
        )
    elif transition.state in (State.FAILED, State.DEAD):
        log.warning("delivery failed for good", reason=outcome.reason, **fields)
    elif transition.state is State.PENDING:
        log.info("delivery will be retried", reason=outcome.reason, **fields)
    else:
        log.debug("delivered", **fields)
