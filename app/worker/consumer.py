"""What every outbox consumer shares: claiming due rows of its upstream under a lease,
respecting the upstream's pause, and giving rows back unsent."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from sqlalchemy.engine import Engine

from app.clock import utcnow
from app.outbox import repository, transitions
from app.outbox.models import Upstream
from app.outbox.policy import RetryPolicy
from app.outbox.repository import Claimed
from app.worker.pause import PauseGate


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
        allowed = self.gate.allowed_batch(limit)
        if allowed <= 0:
            return []
        with self.engine.begin() as conn:
            return repository.claim_due(
                conn,
                upstream=self.upstream,
                limit=allowed,
                now=utcnow(),
                lease_seconds=self.lease_seconds,
                worker_id=self.worker_id,
            )

    def release(self, rows: list[Claimed]) -> None:
        """Give rows back unsent (shutdown, lease about to run out): no attempt used."""
        change = transitions.release_lease(utcnow())
        with self.engine.begin() as conn:
            for row in rows:
                repository.update_leased(conn, row, change)
