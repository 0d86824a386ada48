"""Delivering due outbox rows to Mailmodo: claim, wait for a rate slot, call, record.

The worker loop (``app.worker.runner``) only decides *when* to call ``run_once``; everything
that decides *what happens to a row* is here, so tests drive it directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta

import structlog
from sqlalchemy import Connection
from sqlalchemy.engine import Engine

from app.clock import utcnow
from app.consent.service import Consent  # W12 consent
from app.mailmodo.bodies import SyncPlan, add_to_list_payload
from app.mailmodo.client import MailmodoClient
from app.mailmodo.outcomes import classify_contact_read, classify_failure, classify_mailmodo
from app.mailmodo.status import CONSENT_CALLS, consent_call  # W12 consent
from app.outbox.models import Operation, Upstream
from app.outbox.policy import RetryPolicy
from app.outbox.repository import Claimed
from app.outbox.transitions import AttemptChange
from app.upstream import AttemptOutcome, Outcome, UpstreamError, UpstreamResponse
from app.worker.batch import OutcomeBatcher
from app.worker.consumer import OutboxConsumer, RunStats
from app.worker.outcome_log import log_attempt
from app.worker.ratelimit import SharedRateLimiter, wait_until

log = structlog.get_logger(__name__)


class MailmodoDeliverer(OutboxConsumer):
    """Delivers Mailmodo outbox rows; one instance per worker process."""

    upstream = Upstream.MAILMODO

    def __init__(
        self,
        *,
        engine: Engine,
        client: MailmodoClient,
        policy: RetryPolicy,
        limiter: SharedRateLimiter,
        worker_id: str,
        lease_seconds: float,
        key_fingerprint: str | None,
        pause_probe_seconds: float,
        consent: Consent | None = None,  # W12 consent
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
        #: Outcomes of finished calls, committed in batches (see ``app.worker.batch``).
        self.outcomes: OutcomeBatcher[AttemptChange] = OutcomeBatcher(self.record_many)
        self.consent = consent  # W12 consent

    def claim_rows(self, conn: Connection, limit: int, now: datetime) -> list[Claimed]:
        """Triggers first; status reads only in what is left, within their share of the rate;
        echoing opt-outs finished unsent (``Consent.claim_mailmodo``)."""
        if self.consent is None:
            return super().claim_rows(conn, limit, now)
        return self.consent.claim_mailmodo(
            conn,
            limit=limit,
            now=now,
            lease_seconds=self.lease_seconds,
            worker_id=self.worker_id,
        )

    def after_outcomes(
        self,
        conn: Connection,
        kept: Sequence[tuple[Claimed, Outcome, AttemptChange]],
        now: datetime,
    ) -> None:
        """Delivered sends book their status reads; reads teach consent (``app.consent``)."""
        if self.consent is not None and kept:
            self.consent.on_mailmodo_outcomes(conn, list(kept), now)

    # -- one round --------------------------------------------------------------------------

    async def run_once(self, limit: int, stop: asyncio.Event | None = None) -> RunStats:
        """Claim up to ``limit`` due rows and deliver them concurrently."""
        claimed, slots = await asyncio.to_thread(self.claim_paced, limit, self.limiter)
        stats = RunStats(claimed=len(claimed))
        if not claimed:
            return stats
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
        """Deliver one claimed row at its rate slot; None if it was given back unsent."""
        try:
            if not await wait_until(slot, stop):
                await asyncio.to_thread(self.release, [row])
                return None
            if not self._time_left(row):
                # Another worker may own it by the time our answer is written: do not send.
                log.warning(
                    "lease ran out while waiting for a rate slot; not sent", delivery_id=row.id
                )
                await asyncio.to_thread(self.release, [row])
                return None
            outcome = await self.attempt(row, stop)
        except GiveBack as back:
            log.warning("given back unsent", delivery_id=row.id, why=str(back))
            await asyncio.to_thread(self.release, [row])
            return None
        except asyncio.CancelledError:
            await asyncio.shield(asyncio.to_thread(self.release, [row]))
            raise
        except Exception as exc:
            # Never let a row die with its task: it would come back after every lease and be
            # sent again without a trace. Record it as a retry, so attempts count up to dead.
            log.exception("delivery failed unexpectedly", delivery_id=row.id)
            outcome = Outcome(
                AttemptOutcome.RETRY, None, f"unexpected error: {type(exc).__name__}: {exc}", 0.0
            )
        return await self.outcomes.record(row, outcome)

    def _time_left(self, row: Claimed) -> bool:
        """Whether the lease outlasts a whole call (its timeout) with a margin."""
        if row.leased_until is None:
            return True
        margin = timedelta(seconds=self.client.timeout + 5)
        return utcnow() + margin < row.leased_until

    async def attempt(self, row: Claimed, stop: asyncio.Event | None = None) -> Outcome:
        if row.operation in CONSENT_CALLS:  # W12 consent: status reads, (un)subscribes
            outcome = await consent_call(self.client, row)
            if outcome.kind is AttemptOutcome.RATE_LIMITED and outcome.retry_after:
                await self.limiter.hold_off(outcome.retry_after)
            return outcome
        assert row.target is not None
        try:
            if row.operation == Operation.LIST_SYNC.value:
                read, response = await self._sync_contact(row, stop)
                if read is not None:
                    return read
                assert response is not None
            else:
                response = await self.client.call(Operation(row.operation), row.target, row.payload)
        except UpstreamError as exc:
            return classify_failure(exc)
        outcome = classify_mailmodo(response)
        if outcome.kind is AttemptOutcome.RATE_LIMITED and outcome.retry_after:
            await self.limiter.hold_off(outcome.retry_after)
        return outcome

    async def _sync_contact(
        self, row: Claimed, stop: asyncio.Event | None = None
    ) -> tuple[Outcome | None, UpstreamResponse | None]:
        """Read the contact, then write only what the fill-blank rules allow. A failed read
        is the attempt's outcome (the write is not made); else the write's answer is."""
        plan = SyncPlan.from_json(row.payload)
        got = await self.client.get_contact(plan.email)
        existing = classify_contact_read(got)
        if isinstance(existing, Outcome):
            return existing, None
        slot = (await self.limiter.reserve(1))[0]
        if not await wait_until(slot, stop):
            raise GiveBack("stopping before the contact write")
        if not self._time_left(row):
            raise GiveBack("lease too short for the contact write after the read")
        payload = add_to_list_payload(plan, existing)
        return None, await self.client.call(Operation.LIST_SYNC, row.target or "", payload)

    def record(self, row: Claimed, outcome: Outcome) -> AttemptChange:
        """Write one attempt and its transition in one transaction, under the lease."""
        return self.record_many([(row, outcome)])[0]

    def log_outcome(
        self, row: Claimed, outcome: Outcome, change: AttemptChange, *, lease_kept: bool
    ) -> None:
        _log_outcome(row, outcome, change, lease_kept=lease_kept)


class GiveBack(Exception):
    """Release the row unsent: sending now could race another worker or a shutdown."""


def _log_outcome(
    row: Claimed, outcome: Outcome, transition: AttemptChange, *, lease_kept: bool
) -> None:
    log_attempt(Upstream.MAILMODO.value, row, outcome, transition, lease_kept=lease_kept)


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)
