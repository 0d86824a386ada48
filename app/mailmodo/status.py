"""Mailmodo's consent calls: the status read (``GET /api/v1/getContactDetails``) and the
opt-out and opt-in of a contact (``POST /api/v1/contacts/unsubscribe`` / ``resubscribe``).

Mailmodo calls back to no URL for bounces, unsubscribes and spam reports (mailmodo.md, last
section), so the bridge reads them. A read's answer is classified here:

===============================================  ==============================================
200 with ``unsubscribed`` or ``blocked``          delivered; the attempt keeps a compact summary
                                                  of the status fields (``ContactStatus``)
404, "not found", ``success: false``              delivered, ``{"known": false}``: an unknown
                                                  contact teaches nothing
another 2xx                                       failed for good: an unclear answer teaches
                                                  nothing and is not retried
anything else                                     the generic taxonomy of ``app.upstream``
===============================================  ==============================================

An unsubscribe that Mailmodo answers "already in suppression list" is delivered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from app.mailmodo.client import MailmodoClient
from app.mailmodo.outcomes import NAME, classify_failure, classify_mailmodo
from app.outbox.models import Operation
from app.outbox.schemas import Claimed
from app.upstream import (
    AttemptOutcome,
    Outcome,
    UpstreamError,
    UpstreamResponse,
    answer_message,
    classify_http_error,
)

#: The Mailmodo operations of consent; the worker hands them to ``consent_call``.
CONSENT_CALLS = frozenset(
    {
        Operation.CONTACT_STATUS.value,
        Operation.CONTACT_UNSUBSCRIBE.value,
        Operation.CONTACT_RESUBSCRIBE.value,
    }
)
_REASON_CHARS = 300
_MAX_TYPES = 10
_NOT_FOUND_WORDS = ("not found", "does not exist", "doesn't exist", "no contact", "not exist")
_UNKNOWN = '{"known":false}'


@dataclass(frozen=True, slots=True)
class ContactStatus:
    """The status fields of one read, as kept with its attempt (always under 2 KB)."""

    known: bool
    unsubscribed: bool = False
    unsubscribe_reason: str | None = None
    unsubscribed_email_types: tuple[str, ...] = ()
    blocked: bool = False
    blocked_reason: str | None = None
    contact_id: str | None = None

    def to_json(self) -> str:
        if not self.known:
            return _UNKNOWN
        return orjson.dumps(
            {
                "known": True,
                "unsubscribed": self.unsubscribed,
                "unsubscribeReason": self.unsubscribe_reason,
                "unsubscribedEmailTypes": list(self.unsubscribed_email_types),
                "blocked": self.blocked,
                "blockedReason": self.blocked_reason,
                "contactIdentifier": self.contact_id,
            }
        ).decode()

    @classmethod
    def from_json(cls, text: str | None) -> ContactStatus | None:
        """The summary kept with a read's attempt; None if it is not one."""
        if not text:
            return None
        try:
            body = orjson.loads(text)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(body, dict) or not isinstance(body.get("known"), bool):
            return None
        if not body["known"]:
            return cls(known=False)
        return from_answer(body)


def _flag(value: Any) -> bool:
    """Mailmodo sends booleans; tolerate ``"true"``/``1`` in case a proxy rewrites them."""
    if isinstance(value, str):
        return value.strip().lower() in {"true", "yes", "1"}
    return value is True or (isinstance(value, int) and value == 1)


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    text = str(value).strip()
    return text[:_REASON_CHARS] or None


def from_answer(body: dict[str, Any]) -> ContactStatus:
    """The status fields of a ``getContactDetails`` answer (or of a kept summary)."""
    types = body.get("unsubscribedEmailTypes")
    kept = tuple(str(t)[:50] for t in (types if isinstance(types, list) else [])[:_MAX_TYPES] if t)
    return ContactStatus(
        known=True,
        unsubscribed=_flag(body.get("unsubscribed")),
        unsubscribe_reason=_text(body.get("unsubscribeReason")),
        unsubscribed_email_types=kept,
        blocked=_flag(body.get("blocked")),
        blocked_reason=_text(body.get("blockedReason")),
        contact_id=_text(body.get("contactIdentifier")),
    )


def _common(resp: UpstreamResponse) -> dict[str, Any]:
    return {"status_code": resp.status_code, "duration_ms": resp.duration_ms}


def classify_status_read(resp: UpstreamResponse) -> Outcome:
    """What one status read says (see the module doc)."""
    code, body = resp.status_code, resp.json
    if code in (401, 403, 408, 429) or code >= 500:
        return classify_http_error(resp, NAME, {**_common(resp), "response_body": resp.kept_body})
    message = (answer_message(body) or "").lower()
    is_dict = isinstance(body, dict)
    if (
        code == 404
        or any(word in message for word in _NOT_FOUND_WORDS)
        or (200 <= code < 300 and is_dict and body.get("success") is False)
    ):
        return Outcome(
            AttemptOutcome.DELIVERED, reason=None, response_body=_UNKNOWN, **_common(resp)
        )
    if 200 <= code < 300:
        if is_dict and ("unsubscribed" in body or "blocked" in body):
            status = from_answer(body)
            return Outcome(
                AttemptOutcome.DELIVERED,
                reason=None,
                response_body=status.to_json(),
                ref=status.contact_id,
                **_common(resp),
            )
        return Outcome(
            AttemptOutcome.FAILED,
            reason="Mailmodo's status read gave no unsubscribed or blocked field; nothing learnt",
            response_body=resp.kept_body,
            **_common(resp),
        )
    return classify_http_error(resp, NAME, {**_common(resp), "response_body": resp.kept_body})


def classify_consent_write(resp: UpstreamResponse) -> Outcome:
    """An unsubscribe or resubscribe: "already in suppression list" is as good as done."""
    if 200 <= resp.status_code < 300:
        message = (answer_message(resp.json) or "").lower()
        if "already" in message:
            return Outcome(
                AttemptOutcome.DELIVERED,
                reason=None,
                response_body=resp.kept_body,
                **_common(resp),
            )
    return classify_mailmodo(resp)


async def consent_call(client: MailmodoClient, row: Claimed) -> Outcome:
    """Make one consent call for a claimed row and classify its answer."""
    try:
        if row.operation == Operation.CONTACT_STATUS.value:
            return classify_status_read(await client.get_contact(row.email or ""))
        response = await client.call(Operation(row.operation), row.target or "", row.payload)
    except UpstreamError as exc:
        return classify_failure(exc)
    return classify_consent_write(response)
