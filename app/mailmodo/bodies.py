"""Every body we send Mailmodo, built from a neutral ``Recipient`` (``app.recipient``).

* campaign trigger, journey start and journey abort: one JSON body per recipient, stored as
  the delivery's payload and sent as is;
* list add (contact sync): a stored *plan* (the profile's fill-blank candidates and the fields
  always written), turned into the ``addToList`` body only at delivery time, once the worker
  has read the contact (the rules are ``app.contacts.rules``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from app.contacts import rules
from app.outbox.models import Operation
from app.recipient import Recipient, personalisation_key

DEFAULT_ABORT_REASON = "Aborted by CleverTap via ctmm-bridge"


def trigger_body(operation: Operation, recipient: Recipient) -> dict[str, Any]:
    """The body Mailmodo's API expects for a campaign trigger, journey start or abort, or a
    consent call (the email alone: nothing a caller sends can change more)."""
    if operation in (Operation.CONTACT_UNSUBSCRIBE, Operation.CONTACT_RESUBSCRIBE):
        return {"email": recipient.email}
    if operation is Operation.JOURNEY_ABORT:
        reason = recipient.extras.get("reason")
        return {
            "email": recipient.email,
            "reason": str(reason) if reason else DEFAULT_ABORT_REASON,
        }
    payload: dict[str, Any] = {"email": recipient.email}
    if recipient.data:
        payload["data"] = recipient.data
    if operation is Operation.JOURNEY_START:
        if "allowDuplicateEmail" in recipient.extras:
            payload["allowDuplicateEmail"] = bool(recipient.extras["allowDuplicateEmail"])
        return payload
    if recipient.campaign_data:
        payload["campaign_data"] = recipient.campaign_data
    for key in ("subject", "replyTo", "fromName", "addToList"):
        if key in recipient.extras:
            payload[key] = recipient.extras[key]
    return payload


def sync_plan(
    recipient: Recipient, list_name: str, *, tag_prefix: str, tags_field: str
) -> dict[str, Any]:
    """The stored plan of one sync: the fill-blank candidates are decided against the
    contact only at delivery time, when the worker has read it."""
    always: dict[str, Any] = {}
    if recipient.clevertap_id:
        # Mailmodo's own CleverTap integration keys activity by this contact property.
        always["clevertap_id"] = recipient.clevertap_id
    tags = rules.managed_tags(recipient.data.get(personalisation_key(tags_field)), tag_prefix)
    if tags:
        # An empty value is left out, never sent as "": what Mailmodo does with an empty
        # string is undocumented (contact-sync.md, step 2), and a refusal would fail the sync.
        always[f"{tag_prefix}tags"] = tags
    return {
        "email": recipient.email,
        "listName": list_name,
        "candidates": rules.candidates(recipient.data),
        "always": always,
    }


def stored_payload(
    operation: Operation, recipient: Recipient, target: str, *, tag_prefix: str, tags_field: str
) -> str:
    """A delivery's stored payload: the body itself, or for a list sync its plan."""
    return orjson.dumps(
        sync_plan(recipient, target, tag_prefix=tag_prefix, tags_field=tags_field)
        if operation is Operation.LIST_SYNC
        else trigger_body(operation, recipient)
    ).decode()


@dataclass(frozen=True, slots=True)
class SyncPlan:
    """A stored list-sync plan, read back by the worker (see ``sync_plan``)."""

    email: str
    list_name: str
    candidates: dict[str, Any] = field(default_factory=dict)
    always: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, payload: str | bytes) -> SyncPlan:
        plan = orjson.loads(payload)
        return cls(
            plan["email"], plan["listName"], plan.get("candidates", {}), plan.get("always", {})
        )


def add_to_list_body(plan: SyncPlan, existing: dict[str, Any]) -> dict[str, Any]:
    """``POST /addToList`` for a plan and the contact's current properties (R1, R2, R4)."""
    data = {**rules.fill_blanks(plan.candidates, existing), **plan.always}
    body: dict[str, Any] = {"email": plan.email, "listName": plan.list_name}
    if data:
        body["data"] = data
    return body


def add_to_list_payload(plan: SyncPlan, existing: dict[str, Any]) -> str:
    return orjson.dumps(add_to_list_body(plan, existing)).decode()
