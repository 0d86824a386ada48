"""Pausing an upstream whose credentials are rejected, shared by every worker process.

While paused, workers claim nothing for that upstream; every ``probe_seconds`` one worker
sends a single item as a probe. Any real answer other than 401/403 resumes deliveries, and so
does a changed key (its fingerprint differs from the one that was rejected).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog
from sqlalchemy import Connection
from sqlalchemy.engine import Engine

from app.clock import utcnow
from app.db import read_only
from app.outbox.models import Upstream
from app.system import repository as system_repo
from app.upstream import AttemptOutcome, Outcome

log = structlog.get_logger(__name__)


class PauseGate:
    def __init__(
        self, engine: Engine, upstream: Upstream, *, fingerprint: str | None, probe_seconds: float
    ) -> None:
        self.engine = engine
        self.upstream = upstream
        self.fingerprint = fingerprint
        self.probe_seconds = probe_seconds

    def allowed_batch(self, limit: int) -> int:
        """How many items may be claimed now: 0 while paused, 1 to probe, else ``limit``."""
        with read_only(self.engine).connect() as conn:
            state = system_repo.get_upstream_state(conn, self.upstream.value)
        if state is None or not state.paused:
            return limit  # the common case takes no write lock
        now = utcnow()
        with self.engine.begin() as conn:
            state = system_repo.get_upstream_state(conn, self.upstream.value)
            if state is None or not state.paused:
                return limit
            if state.key_fingerprint != self.fingerprint:
                system_repo.clear_paused(conn, self.upstream.value, now)
                log.info("upstream credentials changed; resuming", upstream=self.upstream.value)
                return limit
            if state.probe_at is not None and state.probe_at > now:
                return 0
            # One probe; push the next one out so other workers keep waiting meanwhile.
            system_repo.set_probe_at(
                conn, self.upstream.value, now + timedelta(seconds=self.probe_seconds), now
            )
            return 1

    def open_in(self, conn: Connection) -> bool:
        """Not paused, read in the caller's transaction (the claim's): no extra connection."""
        return not system_repo.is_paused(conn, self.upstream.value)

    def observe(
        self, conn: Connection, outcome: Outcome, now: datetime, *, paused: bool | None = None
    ) -> bool | None:
        """Pause on 401/403; resume on any other real answer. Runs in the caller's txn;
        ``paused`` is the pause as this transaction already read it (None: not read), so a
        real answer while not paused writes nothing. Returns whether the upstream is paused
        now (None: still not read)."""
        if outcome.kind is AttemptOutcome.AUTH_ERROR:
            before = system_repo.get_upstream_state(conn, self.upstream.value)
            system_repo.set_paused(
                conn,
                self.upstream.value,
                reason=outcome.reason or "credentials rejected",
                fingerprint=self.fingerprint,
                now=now,
                probe_in=self.probe_seconds,
            )
            # Once per pause, not per probe: a probe that is refused again changes nothing.
            if before is None or not before.paused:
                log.error(
                    "upstream rejected our credentials; deliveries paused until they work",
                    upstream=self.upstream.value,
                    reason=outcome.reason,
                    probe_every_seconds=self.probe_seconds,
                )
            return True
        if outcome.kind is AttemptOutcome.RATE_LIMITED or not outcome.status_code:
            return paused
        if paused is False:
            return False
        if system_repo.clear_paused(conn, self.upstream.value, now):
            log.info(
                "upstream accepted our credentials again; resuming", upstream=self.upstream.value
            )
        return False
