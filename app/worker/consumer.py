"""What every outbox consumer shares: claiming due rows of its upstream under a lease,
respecting the upstream's pause, and giving rows back unsent."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import ClassVar

import structlog
from sqlalchemy import Connection
from sqlalchemy.engine import Engine

from app.clock import utcnow
from app.metrics import observe_attempt
from app.outbox import leases, repository, transitions
from app.outbox.models import Upstream
from app.outbox.policy import RetryPolicy
from app.outbox.repository import Claimed
from app.outbox.transitions import AttemptChange
from app.upstream import AttemptOutcome, Outcome
from app.worker.pause import PauseGate
from app.worker.ratelimit import SharedRateLimiter

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class RunStats:
    claimed: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    released: int = 0

    def count(self, state: str) -> None:
        self.outcomes[state] = self.outcomes.get(state, 0) + 1


class OutboxConsumer:
    upstream: ClassVar[Upstream]

    def __init__(
        self,
        *,
        engine: Engine,
        policy: RetryPolicy,
        worker_id: str,
        lease_seconds: float,
        key_fingerprint: str | None,
        pause_probe_seconds: float,
    ) -> None:
        self.engine = engine
        self.policy = policy
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.gate = PauseGate(
            engine, self.upstream, fingerprint=key_fingerprint, probe_seconds=pause_probe_seconds
        )

    def claim(self, limit: int) -> list[Claimed]:
        """Lease up to ``limit`` due rows (one while probing a pause, none while paused)."""
        return self.claim_paced(limit, None)[0]

    def claim_paced(
        self, limit: int, limiter: SharedRateLimiter | None
    ) -> tuple[list[Claimed], list[float]]:
        """Lease due rows and reserve a rate slot for each in the same transaction: one
        write per batch, not two (the slots are epoch times, see ``SharedRateLimiter``)."""
        _, rows, slots = self.record_and_claim([], limit, limiter)
        return rows, slots

    def _claim_gated(
        self, limit: int, limiter: SharedRateLimiter | None
    ) -> tuple[list[Claimed], list[float]]:
        """The claim while the upstream is paused: the gate allows none, or one probe."""
        allowed = self.gate.allowed_batch(limit)
        if allowed <= 0:
            return [], []
        with self.engine.begin() as conn:
            return self._claim_in(conn, allowed, limiter)

    def _claim_in(
        self, conn: Connection, limit: int, limiter: SharedRateLimiter | None
    ) -> tuple[list[Claimed], list[float]]:
        rows = self.claim_rows(conn, limit, utcnow())
        slots = limiter.reserve_in(conn, len(rows)) if limiter is not None and rows else []
        return rows, slots

    def claim_rows(self, conn: Connection, limit: int, now: datetime) -> list[Claimed]:
        """Lease up to ``limit`` due rows in the caller's transaction (a consumer whose rows
        are not all alike, e.g. Mailmodo's triggers before status reads, says how)."""
        return repository.claim_due(
            conn,
            upstream=self.upstream,
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
        """What else the recorded outcomes of rows still ours cause, in the same transaction
        (nothing here; Mailmodo's deliverer books status reads)."""

    def record_many(self, results: Sequence[tuple[Claimed, Outcome]]) -> list[AttemptChange]:
        """The attempts and transitions of many single-item calls in ONE transaction, each
        row under its own lease: a row another worker took keeps that worker's state (its
        attempt is still recorded, the call was made)."""
        return self.record_and_claim(results, 0, None)[0]

    def record_and_claim(
        self,
        results: Sequence[tuple[Claimed, Outcome]],
        limit: int,
        limiter: SharedRateLimiter | None,
    ) -> tuple[list[AttemptChange], list[Claimed], list[float]]:
        """``record_many`` and ``claim_paced`` in one transaction: the slots the recorded
        calls free are refilled by the same commit (one write a round, not two)."""
        if not results and limit <= 0:
            return [], [], []
        now = utcnow()
        changes = [
            transitions.after_attempt(row, outcome, now, self.policy) for row, outcome in results
        ]
        rows: list[Claimed] = []
        slots: list[float] = []
        gate_closed = False
        with self.engine.begin() as conn:
            # The pause, read once a round: recording and claiming both go by it, and a
            # real answer while not paused writes nothing (see ``PauseGate.observe``).
            paused = not self.gate.open_in(conn)
            held: set[int] = set()
            if results:
                held, paused = self._record_in(conn, results, changes, now, paused)
            if limit > 0:
                # A pause (or a probe) is the gate's to decide, after this commit.
                if paused:
                    gate_closed = True
                else:
                    rows, slots = self._claim_in(conn, limit, limiter)
        for (row, outcome), change in zip(results, changes, strict=True):
            observe_attempt(
                self.upstream.value, outcome.kind.value, change.state.value, outcome.duration_ms
            )
            self.log_outcome(row, outcome, change, lease_kept=row.id in held)
        if gate_closed:
            rows, slots = self._claim_gated(limit, limiter)
        return changes, rows, slots

    def _record_in(
        self,
        conn: Connection,
        results: Sequence[tuple[Claimed, Outcome]],
        changes: list[AttemptChange],
        now: datetime,
        paused: bool,
    ) -> tuple[set[int], bool]:
        """Write the attempts and the guarded updates; the ids whose lease was still ours,
        and whether the upstream is paused after this batch."""
        worker_id = self.worker_id
        attempts = [
            {
                "delivery_id": row.id,
                "number": change.attempt_number,
                "started_at": now - timedelta(milliseconds=outcome.duration_ms),
                "duration_ms": outcome.duration_ms,
                "status_code": outcome.status_code,
                "outcome": outcome.kind.value,
                "error": outcome.reason,
                "response_body": outcome.response_body,
                "worker_id": worker_id,
            }
            for (row, outcome), change in zip(results, changes, strict=True)
        ]
        repository.add_attempts(conn, attempts)
        held = leases.finish_held(
            conn, [(row, change) for (row, _), change in zip(results, changes, strict=True)]
        )
        self.after_outcomes(
            conn,
            [
                (row, outcome, change)
                for (row, outcome), change in zip(results, changes, strict=True)
                if row.id in held
            ],
            now,
        )
        # An auth refusal pauses; else any real answer lifts a pause: one decision a batch.
        decisive = next(
            (o for _, o in results if o.kind is AttemptOutcome.AUTH_ERROR),
            next(
                (
                    o
                    for _, o in results
                    if o.status_code and o.kind is not AttemptOutcome.RATE_LIMITED
                ),
                None,
            ),
        )
        if decisive is not None:
            paused = bool(self.gate.observe(conn, decisive, now, paused=paused))
        return held, paused

    def log_outcome(
        self, row: Claimed, outcome: Outcome, change: AttemptChange, *, lease_kept: bool
    ) -> None:
        """One log line per recorded attempt (subclasses say it in their upstream's words)."""
        fields = {
            "delivery_id": row.id,
            "upstream": self.upstream.value,
            "status_code": outcome.status_code,
            "outcome": outcome.kind.value,
            "state": change.state.value,
        }
        if not lease_kept:
            log.warning(
                "lease lost before the result was written; another worker owns the row", **fields
            )
        else:
            log.debug("attempt recorded", reason=outcome.reason, **fields)

    def release(self, rows: list[Claimed]) -> None:
        """Give rows back unsent (shutdown, lease about to run out): no attempt used."""
        change = transitions.release_lease(utcnow())
        with self.engine.begin() as conn:
            for row in rows:
                repository.update_leased(conn, row, change)
