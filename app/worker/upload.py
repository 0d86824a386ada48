"""Uploading due Mailmodo activity to CleverTap in batches of up to 1000 records.

One claim takes a whole batch; one ``/1/upload`` request carries it; the answer is read record
by record, so an invalid record fails alone (with CleverTap's code) and never blocks or
repeats, while its neighbours are delivered.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any, Unpack

import structlog
from sqlalchemy.engine import Engine

from app import db
from app.clevertap.bodies import upload_record_for
from app.clevertap.client import CleverTapClient
from app.clevertap.consent import consent_record, endpoint_of  # W12 consent
from app.clevertap.outcomes import classify_failure, classify_upload, refused_whole_batch
from app.clock import utcnow
from app.consent.service import TO_CLEVERTAP, Consent  # W12 consent
from app.logging import log_throttled
from app.metrics import UPLOAD_BATCH, UPSTREAM_LATENCY, observe_attempt
from app.outbox import repository, transitions
from app.outbox.models import Upstream
from app.outbox.repository import Claimed
from app.outbox.transitions import AttemptChange
from app.upstream import AttemptOutcome, Outcome, UpstreamError
from app.worker.consumer import ConsumerSettings, OutboxConsumer, RunStats
from app.worker.outcome_log import log_upload
from app.worker.semaphore import LocalSlots, UploadSlots

log = structlog.get_logger(__name__)


def upload_record(row: Claimed) -> dict[str, Any] | None:
    """The upload record of a row, keyed by ``objectId``, else ``identity`` = email."""
    if row.operation in TO_CLEVERTAP:  # W12 consent: a profile or subscribe record
        return consent_record(
            row.operation, row.payload, clevertap_id=row.clevertap_id, email=row.email
        )
    return upload_record_for(row.payload, clevertap_id=row.clevertap_id, email=row.email)


class CleverTapUploader(OutboxConsumer):
    upstream = Upstream.CLEVERTAP

    def __init__(
        self,
        *,
        engine: Engine,
        client: CleverTapClient,
        batch_size: int,
        consent: Consent | None = None,  # W12 consent
        slots: UploadSlots | None = None,
        slot_wait_seconds: float = 0.0,
        **common: Unpack[ConsumerSettings],
    ) -> None:
        super().__init__(engine=engine, **common)
        self.client = client
        self.batch_size = batch_size
        self.consent = consent  # W12 consent
        self.slots: UploadSlots = slots or LocalSlots()  # W13
        self.slot_wait_seconds = slot_wait_seconds  # W13

    def claim(self, limit: int | None = None) -> list[Claimed]:
        if self.consent is None:
            return super().claim(limit or self.batch_size)
        # W12 consent: opt-outs that would echo are finished unsent at the claim.
        allowed = self.gate.allowed_batch(limit or self.batch_size)
        if allowed <= 0:
            return []
        with self.engine.begin() as conn:
            return self.consent.claim_clevertap(
                conn,
                limit=allowed,
                now=utcnow(),
                lease_seconds=self.lease_seconds,
                worker_id=self.worker_id,
            )

    async def run_once(self, limit: int | None = None) -> RunStats:
        """Claim one batch and upload it (tests and the runner both use this path)."""
        rows = await asyncio.to_thread(self.claim, limit)
        stats = RunStats(claimed=len(rows))
        for transition in await self.upload(rows):
            stats.count(transition.state.value)
        return stats

    async def upload(self, rows: list[Claimed]) -> list[AttemptChange]:
        if not rows:
            return []
        # W13 (issue 14): one of the account's upload slots, counted across every process.
        answered: list[bool] = []  # set once CleverTap has answered the batch
        try:
            async with self.slots.hold(self.slot_wait_seconds) as held:
                if not held:  # none came free while the lease allows: give the batch back
                    await asyncio.shield(asyncio.to_thread(self.release, rows))
                    return []
                return await self._upload(rows, answered)
        except asyncio.CancelledError:
            if not answered:  # stopped before the batch went: unsent, give it back
                await asyncio.shield(asyncio.to_thread(self.release, rows))
            # Stopped while its answers waited for the database: uploaded, so not given back
            # as unsent; the rows return after the lease (or as a gone worker's).
            raise

    async def _upload(self, rows: list[Claimed], answered: list[bool]) -> list[AttemptChange]:
        if any(self.lease_in_doubt(row) for row in rows):
            # Waited long for a slot, or this worker stalled: rows taken back meanwhile belong
            # to another worker now, which uploads them; only those still held go.
            held = await asyncio.to_thread(self.held, rows)
            if len(held) < len(rows):
                log.warning(
                    "leases taken back while this worker stalled; not uploaded",
                    rows=len(rows) - len(held),
                )
                rows = [row for row in rows if row.id in held]
                if not rows:
                    return []
        sendable: list[tuple[Claimed, dict[str, Any]]] = []
        unsendable: list[Claimed] = []
        for row in rows:
            record = upload_record(row)
            if record is None:
                unsendable.append(row)
            else:
                sendable.append((row, record))
        results: list[tuple[Claimed, Outcome]] = [
            (row, Outcome(AttemptOutcome.FAILED, None, "no CleverTap ID and no email", 0.0))
            for row in unsendable
        ]
        # W12 consent: subscribe records go to /1/subscribe, the rest to /1/upload.
        groups: dict[str, list[tuple[Claimed, dict[str, Any]]]] = {}
        for row, record in sendable:
            groups.setdefault(endpoint_of(row.operation), []).append((row, record))
        for path, group in groups.items():
            records = [record for _, record in group]
            try:
                outcomes = await self.send(records, path)
            except Exception as exc:  # a stop (CancelledError) gives the batch back: upload()
                # Recorded as a retry so attempts count up; a crashed task would instead
                # resend the batch after every lease without a trace.
                log.exception("upload failed unexpectedly", records=len(records))
                reason = f"unexpected error: {type(exc).__name__}: {exc}"
                outcomes = [Outcome(AttemptOutcome.RETRY, None, reason, 0.0)] * len(records)
            results.extend(
                (row, outcome) for (row, _), outcome in zip(group, outcomes, strict=True)
            )
        answered.append(True)
        return await self._record_until_written(results)

    async def _record_until_written(
        self, results: list[tuple[Claimed, Outcome]]
    ) -> list[AttemptChange]:
        """``record``, tried again while the database cannot write: the batch was uploaded,
        so its answers wait in memory rather than its rows waiting out their lease to be
        uploaded again. A stop (the task cancelled) gives up: the rows come back then."""
        pause = db.RETRY_SECONDS
        came = utcnow()  # the answers are in: the time their attempts get if a write fails
        answered: datetime | None = None
        while True:
            try:
                if answered is None:
                    return await asyncio.to_thread(self.record, results)
                return await asyncio.to_thread(self.record, results, answered)
            except Exception as exc:
                if not db.unavailable(exc):
                    raise
                answered = came
                log_throttled(
                    log,
                    "warning",
                    "database unavailable: upload answers kept in memory, trying again",
                    key="upload",
                    answers=len(results),
                    error=f"{type(exc).__name__}: {str(exc)[:200]}",
                )
            await asyncio.sleep(pause)
            pause = min(db.RETRY_MAX_SECONDS, pause * 2)

    async def send(self, records: list[dict[str, Any]], path: str = "/1/upload") -> list[Outcome]:
        """One outcome per record. A whole-request refusal (400, 413) of several records is
        bisected, so one bad record fails alone instead of taking its batch down with it."""
        try:
            response = await self.client.upload(records, path)
        except UpstreamError as exc:
            return [classify_failure(exc)] * len(records)
        UPLOAD_BATCH.observe(len(records))
        UPSTREAM_LATENCY.labels(self.upstream.value).observe(response.duration_ms / 1000)
        if refused_whole_batch(response) and len(records) > 1:
            half = len(records) // 2
            return [
                *await self.send(records[:half], path),
                *await self.send(records[half:], path),
            ]
        return classify_upload(response, records)

    def record(
        self, results: list[tuple[Claimed, Outcome]], answered: datetime | None = None
    ) -> list[AttemptChange]:
        """Attempts and transitions of a whole batch in one transaction, each under its lease;
        ``answered``: when the answers came, if they waited in memory (the database away)."""
        now = utcnow()
        at = answered or now
        changes = [
            transitions.after_attempt(row, outcome, at, self.policy) for row, outcome in results
        ]
        attempts = [
            {
                "delivery_id": row.id,
                "number": t.attempt_number,
                "started_at": at - timedelta(milliseconds=outcome.duration_ms),
                "duration_ms": outcome.duration_ms,
                "status_code": outcome.status_code,
                "outcome": outcome.kind.value,
                "error": outcome.reason,
                "response_body": outcome.response_body,
                "worker_id": self.worker_id,
            }
            for (row, outcome), t in zip(results, changes, strict=True)
        ]
        with self.engine.begin() as conn:
            repository.add_attempts(conn, attempts)
            kept = repository.finish_many(
                conn, [(row, t) for (row, _), t in zip(results, changes, strict=True)]
            )
            if self.consent is not None:  # W12 consent: what CleverTap was told
                self.consent.on_clevertap_outcomes(
                    conn, [(r, o, t) for (r, o), t in zip(results, changes, strict=True)], now
                )
            batch_outcome = next(
                (o for _, o in results if o.kind is AttemptOutcome.AUTH_ERROR),
                next((o for _, o in results if o.status_code), None),
            )
            if batch_outcome is not None:
                self.gate.observe(conn, batch_outcome, now)
        for (_, outcome), t in zip(results, changes, strict=True):
            observe_attempt(self.upstream.value, outcome.kind.value, t.state.value, None)
        log_upload(self.upstream.value, results, changes, kept=kept)
        return changes
