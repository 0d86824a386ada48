"""Every body we send Mailmojo, decided by the contact rules (``app.contacts.rules``).

Ingest stores a *plan* per profile (``sync_plan``: the email, the list, what the profile offers
for the fill-blank fields, the wanted managed tags); the worker reads the contact and only then
``decide``s the write, so R2 and R4 are judged against what Mailmojo holds at that moment:

* no such contact: subscribe it to the list with every offered field and the wanted tags;
* a contact already on the list (or whose lists are not shown): ``PATCH`` only the blank fields
  and the merged tag list — never a subscribe, so an opt-out is never undone;
* a contact that is not on the list and has not opted out: subscribe it with
  ``force_subscribe: false`` (the cautious choice of ``contact-sync.md`` §4);
* nothing to change: no write at all, so a replay does nothing.

``name`` is never sent: Mailmojo prefers it over ``first_name`` and ``last_name``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from app.contacts import rules
from app.recipient import Recipient, personalisation_key

#: Words in a contact's ``status`` that mean it opted out or cannot be mailed; such a contact
#: is only ever updated (Mailmojo's status vocabulary is not documented).
OPTED_OUT_WORDS = ("unsub", "opt", "bounce", "spam", "complain", "block", "suppress")


def sync_plan(
    recipient: Recipient, list_id: str, *, tag_prefix: str, tags_field: str
) -> dict[str, Any]:
    """The stored plan of one sync (see the module doc)."""
    return {
        "email": recipient.email,
        "list_id": list_id,
        "candidates": rules.candidates(recipient.data),
        "tags": rules.wanted_tags(recipient.data.get(personalisation_key(tags_field)), tag_prefix),
        "prefix": tag_prefix,
    }


def stored_payload(recipient: Recipient, list_id: str, *, tag_prefix: str, tags_field: str) -> str:
    return orjson.dumps(
        sync_plan(recipient, list_id, tag_prefix=tag_prefix, tags_field=tags_field)
    ).decode()


@dataclass(frozen=True, slots=True)
class SyncPlan:
    """A stored plan, read back by the worker. ``tags`` None: the call named no tags."""

    email: str
    list_id: str
    candidates: dict[str, Any] = field(default_factory=dict)
    tags: list[str] | None = None
    prefix: str = "ct_"

    @classmethod
    def from_json(cls, payload: str | bytes) -> SyncPlan:
        plan = orjson.loads(payload)
        return cls(
            email=plan["email"],
            list_id=str(plan["list_id"]),
            candidates=plan.get("candidates") or {},
            tags=plan.get("tags"),
            prefix=plan.get("prefix", "ct_"),
        )


@dataclass(frozen=True, slots=True)
class Contact:
    """What the read says Mailmojo holds for the contact."""

    fields: dict[str, Any]
    tags: list[str]
    #: The ids of the lists it is associated with (any status); None when the reply does not say.
    lists: frozenset[str] | None
    status: str | None = None

    @property
    def opted_out(self) -> bool:
        status = (self.status or "").lower()
        return any(word in status for word in OPTED_OUT_WORDS)


@dataclass(frozen=True, slots=True)
class Write:
    """The one write a sync makes: ``subscribe`` (POST to the list) or ``update`` (PATCH)."""

    kind: Literal["subscribe", "update"]
    body: dict[str, Any]


def decide(plan: SyncPlan, existing: Contact | None) -> Write | None:
    """The write for a plan and the contact as read (None: no such contact); None when there
    is nothing to change (R1-R5, see the module doc)."""
    if existing is None:
        body: dict[str, Any] = {"email": plan.email, **rules.fill_blanks(plan.candidates, {})}
        if plan.tags:
            body["tags"] = plan.tags
        return Write("subscribe", body)
    body = {"email": plan.email, **rules.fill_blanks(plan.candidates, existing.fields)}
    tags = rules.merge_tags(existing.tags, plan.tags, plan.prefix)
    if tags != existing.tags:
        body["tags"] = tags
    joinable = existing.lists is not None and not existing.opted_out
    if joinable and plan.list_id not in (existing.lists or ()):
        return Write("subscribe", {**body, "force_subscribe": False})
    if len(body) == 1:
        return None
    return Write("update", body)
