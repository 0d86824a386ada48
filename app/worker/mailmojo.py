"""Delivering Mailmojo contact syncs: claim, then per row read -> decide -> write, under the
lease, at the shared Mailmojo rate.

Only the attempt is Mailmojo's own; ``RowDeliverer`` does the rest as for Mailmodo (``run_once``,
``deliver``, the lease check, the hold-off after a 429, the batched recording and the operator's
log line), so the worker loop treats it like any other consumer. One attempt is:

1. read the contact (``GET /v1/contacts/{email}/``) at a rate slot; an answer that does not
   clearly say "this contact" or "no such contact" ends the attempt without a write;
2. decide the write by the contact rules (``app.mailmojo.bodies.decide``); nothing to change
   ends the attempt as delivered (``ref`` ``unchanged``) — a replay writes nothing;
3. write at a second rate slot, but only if the lease still outlasts the whole call: a row whose
   lease could have moved to another worker is given back unsent instead.
"""

from __future__ import annotations

import asyncio

from app.mailmojo.bodies import SyncPlan, decide
from app.mailmojo.client import MailmojoClient
from app.mailmojo.outcomes import (
    classify_contact_read,
    classify_failure,
    classify_write,
    unchanged,
)
from app.outbox.models import Upstream
from app.outbox.repository import Claimed
from app.upstream import Outcome, UpstreamError
from app.worker.consumer import RowDeliverer

#: The shared rate slot clock's name (``rate_slots`` row).
RATE_NAME = "mailmojo"


class MailmojoDeliverer(RowDeliverer[MailmojoClient]):
    """Delivers Mailmojo outbox rows (contact syncs); one instance per worker process."""

    upstream = Upstream.MAILMOJO

    async def attempt(self, row: Claimed, stop: asyncio.Event | None = None) -> Outcome:
        """Read, decide, write (see the module doc); the outcome of the last call made."""
        plan = SyncPlan.from_json(row.payload)
        try:
            got = await self.client.get_contact(plan.email)
            existing = classify_contact_read(got, plan.email)
            if isinstance(existing, Outcome):
                return existing
            write = decide(plan, existing)
            if write is None:
                return unchanged(got)
            await self.next_call_slot(row, stop, "the contact write")
            if write.kind == "subscribe":
                response = await self.client.subscribe(plan.list_id, write.body)
            else:
                response = await self.client.update_contact(plan.email, write.body)
        except UpstreamError as exc:
            return classify_failure(exc)
        return classify_write(response, write.kind)
