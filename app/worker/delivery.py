"""Delivering due outbox rows to Mailmodo: claim, wait for a rate slot, call, record.

The worker loop (``app.worker.runner``) only decides *when* to call ``run_once``; what happens
to a row is here (Mailmodo's calls and answers) and in ``RowDeliverer`` (the lease, the
give-back, the hold-off after a 429, the recording), so tests drive it directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Unpack

from sqlalchemy import Connection
from sqlalchemy.engine import Engine

from app.consent.service import Consent  # W12 consent
from app.mailmodo.bodies import SyncPlan, add_to_list_payload
from app.mailmodo.client import MailmodoClient
from app.mailmodo.outcomes import classify_contact_read, classify_failure, classify_mailmodo
from app.mailmodo.status import CONSENT_CALLS, consent_call  # W12 consent
from app.outbox.models import Operation, Upstream
from app.outbox.repository import Claimed
from app.outbox.transitions import AttemptChange
from app.upstream import Outcome, UpstreamError, UpstreamResponse
from app.worker.consumer import ConsumerSettings, RowDeliverer
from app.worker.ratelimit import SharedRateLimiter


class MailmodoDeliverer(RowDeliverer[MailmodoClient]):
    """Delivers Mailmodo outbox rows; one instance per worker process."""

    upstream = Upstream.MAILMODO

    def __init__(
        self,
        *,
        engine: Engine,
        client: MailmodoClient,
        limiter: SharedRateLimiter,
        consent: Consent | None = None,  # W12 consent
        **common: Unpack[ConsumerSettings],
    ) -> None:
        super().__init__(engine=engine, client=client, limiter=limiter, **common)
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

    async def attempt(self, row: Claimed, stop: asyncio.Event | None = None) -> Outcome:
        """One trigger, list sync or consent call; the outcome of the last call made."""
        if row.operation in CONSENT_CALLS:  # W12 consent: status reads, (un)subscribes
            return await consent_call(self.client, row)
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
        return classify_mailmodo(response)

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
        await self.next_call_slot(row, stop, "the contact write")
        payload = add_to_list_payload(plan, existing)
        return None, await self.client.call(Operation.LIST_SYNC, row.target or "", payload)
