"""Contact sync: what a CleverTap profile asks of a Mailmodo list (see ``rules``)."""

from __future__ import annotations

from typing import Any

from app.clevertap.schemas import ParsedCall, Recipient, Skipped, personalisation_key
from app.contacts import rules


def skip_guests(parsed: ParsedCall) -> ParsedCall:
    """R5: guests (no identity, only a CleverTap ID) are skipped and counted."""
    kept: list[Recipient] = []
    skipped = list(parsed.skipped)
    for index, recipient in enumerate(parsed.recipients):
        if recipient.identified:
            kept.append(recipient)
        else:
            skipped.append(Skipped(index, "guest profile (no identity)"))
    return ParsedCall(parsed.kind, kept, skipped)


def sync_payload(
    recipient: Recipient, list_name: str, *, tag_prefix: str, tags_field: str
) -> dict[str, Any]:
    """The stored plan of one sync: the fill-blank candidates are decided against the
    contact only at delivery time, when the worker has read it."""
    always: dict[str, Any] = {}
    if recipient.clevertap_id:
        # Mailmodo's own CleverTap integration keys activity by this contact property.
        always["clevertap_id"] = recipient.clevertap_id
    tags = rules.managed_tags(recipient.data.get(personalisation_key(tags_field)), tag_prefix)
    if tags is not None:
        always[f"{tag_prefix}tags"] = tags
    return {
        "email": recipient.email,
        "listName": list_name,
        "candidates": rules.candidates(recipient.data),
        "always": always,
    }


def add_to_list_body(plan: dict[str, Any], existing: dict[str, Any]) -> dict[str, Any]:
    """``POST /addToList`` for a plan and the contact's current properties (R1, R2, R4)."""
    data = {**rules.fill_blanks(plan.get("candidates", {}), existing), **plan.get("always", {})}
    body: dict[str, Any] = {"email": plan["email"], "listName": plan["listName"]}
    if data:
        body["data"] = data
    return body
