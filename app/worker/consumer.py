"""What every outbox consumer shares: claiming due rows of its upstream under a lease,
respecting the upstream's pause, and giving rows back unsent; and, for the consumers that make
one call per row (``RowDeliverer``), everything around that call but the call itself."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import ClassVar, Generic, Protocol, TypedDict, TypeVar, Unpack

import structlog
from sqlalchemy import Connection
from sqlalchemy.engine import Engine

from app.clock import utcnow
from app.db import read_only
from app.metrics import observe_attempt
from app.outbox import leases, repository, transitions
from app.outbox.models import Upstream
from app.outbox.policy import RetryPolicy
from app.outbox.repository import Claimed
from app.outbox.transitions import AttemptChange
from app.system import recovery
from app.upstream import AttemptOutcome, Outcome
from app.worker.batch import OutcomeBatcher
from app.worker.outcome_log import log_attempt
from app.worker.pause import PauseGate
from app.worker.ratelimit import SharedRateLimiter, wait_until

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class RunStats:
    claimed: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    released: int = 0

    def count(self, state: str) -> None:
        self.outcomes[state] = self.outcomes.get(state, 0) + 1


class ConsumerSettings(TypedDict):
    """What every consumer takes besides its engine (``OutboxConsumer``'s other arguments):
    subclasses pass it on as ``**common`` instead of listing it again."""

    policy: RetryPolicy
    worker_id: str
    lease_seconds: float
    key_fingerprint: str | None
    pause_probe_seconds: float
    heartbeat_seconds: float


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
        heartbeat_seconds: float,
    ) -> None:
        self.engine = engine
        self.policy = policy
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        #: A row claimed longer ago than this, or any row while this worker's last committed
        #: heartbeat is older than this, may have been taken back meanwhile, should the worker
        #: have stalled (a frozen container, a stopped process) long enough for the others to
        #: find its heartbeat stale: its lease is checked before a call is started. Half the
        #: window after which a worker counts as gone (``app.system.recovery``).
        self.fence_after = recovery.gone_after(heartbeat_seconds) / 2
        #: When this worker's heartbeat last committed (set by the runner; None: no runner).
        self.beat_at: datetime | None = None
        self.gate = PauseGate(
            engine, self.upstream, fingerprint=key_fingerprint, probe_seconds=pause_probe_seconds
        )

    def lease_in_doubt(self, row: Claimed) -> bool:
        """Whether the row's lease may have been taken back: claimed ``fence_after`` ago or
        more, or this worker's heartbeat has not committed for that long (by the clock)."""
        now = utcnow()
        if self.beat_at is not None and now - self.beat_at >= self.fence_after:
            return True
        if row.leased_until is None:
            return False
        claimed_at = row.leased_until - timedelta(seconds=self.lease_seconds)
        return now - claimed_at >= self.fence_after

    def held(self, rows: Sequence[Claimed]) -> set[int]:
        """The ids of ``rows`` whose lease this worker still holds (its token is the row's),
        read without a write lock: on SQLite a locking read would queue behind ingest."""
        with read_only(self.engine).connect() as conn:
            return leases.leases_held(conn, rows)

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

    def record_many(
        self,
        results: Sequence[tuple[Claimed, Outcome]],
        answered: Mapping[int, datetime] | None = None,
    ) -> list[AttemptChange]:
        """The attempts and transitions of many single-item calls in ONE transaction, each
        row under its own lease: a row another worker took keeps that worker's state (its
        attempt is still recorded, the call was made)."""
        return self.record_and_claim(results, 0, None, answered)[0]

    def record_and_claim(
        self,
        results: Sequence[tuple[Claimed, Outcome]],
        limit: int,
        limiter: SharedRateLimiter | None,
        answered: Mapping[int, datetime] | None = None,
    ) -> tuple[list[AttemptChange], list[Claimed], list[float]]:
        """``record_many`` and ``claim_paced`` in one transaction: the slots the recorded
        calls free are refilled by the same commit (one write a round, not two).

        ``answered``: for answers that waited in memory (the database was away), when they
        had arrived; their attempts and transitions take that time, not the write's."""
        if not results and limit <= 0:
            return [], [], []
        now = utcnow()
        times = [now] * len(results)
        if answered:
            times = [answered.get(row.id, now) for row, _ in results]
        changes = [
            transitions.after_attempt(row, outcome, at, self.policy)
            for (row, outcome), at in zip(results, times, strict=True)
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
                held, paused = self._record_in(conn, results, changes, times, now, paused)
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
        times: list[datetime],
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
                "started_at": at - timedelta(milliseconds=outcome.duration_ms),
                "duration_ms": outcome.duration_ms,
                "status_code": outcome.status_code,
                "outcome": outcome.kind.value,
                "error": outcome.reason,
                "response_body": outcome.response_body,
                "worker_id": worker_id,
            }
            for (row, outcome), change, at in zip(results, changes, times, strict=True)
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
        """The operator's line of one recorded attempt (``app.worker.outcome_log``)."""
        log_attempt(self.upstream.value, row, outcome, change, lease_kept=lease_kept)

    def release(self, rows: list[Claimed]) -> None:
        """Give rows back unsent (shutdown, lease about to run out): no attempt used."""
        change = transitions.release_lease(utcnow())
        with self.engine.begin() as conn:
            for row in rows:
                repository.update_leased(conn, row, change)


class GiveBack(Exception):
    """Release the row unsent: calling now could race another worker or a shutdown."""


class TimedClient(Protocol):
    #: Seconds one call may take at most: the lease must outlast it.
    timeout: float


ClientT = TypeVar("ClientT", bound=TimedClient)


class RowDeliverer(OutboxConsumer, Generic[ClientT], ABC):
    """A consumer that makes one attempt per row at a shared rate (Mailmodo, Mailmojo).

    The lease check, the give-back, the hold-off after a 429, the unexpected error and the
    batched recording are here once; an upstream writes only ``attempt``: its calls for one
    row and what the answer means. One instance per worker process.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        client: ClientT,
        limiter: SharedRateLimiter,
        **common: Unpack[ConsumerSettings],
    ) -> None:
        super().__init__(engine=engine, **common)
        self.client = client
        self.limiter = limiter
        #: Outcomes of finished attempts, committed in batches (see ``app.worker.batch``).
        self.outcomes: OutcomeBatcher[AttemptChange] = OutcomeBatcher(self.record_many)

    @abstractmethod
    async def attempt(self, row: Claimed, stop: asyncio.Event | None = None) -> Outcome:
        """The upstream's calls for one row and the outcome they come to; ``GiveBack`` to
        release the row unsent (a further call the lease or a stop no longer allows)."""

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
            if self.lease_in_doubt(row) and not await asyncio.to_thread(self.held, [row]):
                # Taken back while this worker stalled: the new owner sends it, not us.
                log.warning(
                    "lease taken back while this worker stalled; not sent", delivery_id=row.id
                )
                return None
            outcome = await self.attempt(row, stop)
            if outcome.kind is AttemptOutcome.RATE_LIMITED and outcome.retry_after:
                # A 429 with Retry-After holds every worker's calls to this upstream off.
                await self.limiter.hold_off(outcome.retry_after)
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
            log.exception(
                "delivery failed unexpectedly", delivery_id=row.id, upstream=self.upstream.value
            )
            outcome = Outcome(
                AttemptOutcome.RETRY, None, f"unexpected error: {type(exc).__name__}: {exc}", 0.0
            )
        return await self.outcomes.record(row, outcome)

    def record(self, row: Claimed, outcome: Outcome) -> AttemptChange:
        """Write one attempt and its transition in one transaction, under the lease."""
        return self.record_many([(row, outcome)])[0]

    async def next_call_slot(self, row: Claimed, stop: asyncio.Event | None, what: str) -> None:
        """Wait for a rate slot for a further call of the same attempt (``what``: the write
        after a read); ``GiveBack`` if stopping first or the lease would not outlast it."""
        slot = (await self.limiter.reserve(1))[0]
        if not await wait_until(slot, stop):
            raise GiveBack(f"stopping before {what}")
        if not self._time_left(row):
            raise GiveBack(f"lease too short for {what}")
        if self.lease_in_doubt(row) and not await asyncio.to_thread(self.held, [row]):
            raise GiveBack(f"lease taken back before {what}")

    def _time_left(self, row: Claimed) -> bool:
        """Whether the lease outlasts a whole call (its timeout) with a margin."""
        if row.leased_until is None:
            return True
        margin = timedelta(seconds=self.client.timeout + 5)
        return utcnow() + margin < row.leased_until
