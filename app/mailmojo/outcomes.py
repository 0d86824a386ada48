"""What Mailmojo's answers mean for a contact sync: the only place that knows its status codes
and body shapes.

The read (``GET /v1/contacts/{email}/``) comes first:

==========================  ===================================================
200 with this contact        the contact (fields, tags, lists, status)
404                          no such contact: it will be subscribed
401 / 403, 429, 408, 5xx     the generic taxonomy of ``app.upstream`` (no write)
200 not readable as it       retried without writing: the rules need the values
other 4xx                    failed for good, reason kept
==========================  ===================================================

The write (subscribe or update): 2xx delivered (``ref`` says which write, or ``unchanged``
when none was needed); anything else the generic taxonomy.
"""

from __future__ import annotations

from typing import Any

from app.mailmojo.bodies import Contact
from app.upstream import (
    AttemptOutcome,
    Outcome,
    UpstreamError,
    UpstreamResponse,
    classify_error,
    classify_http_error,
)

NAME = "Mailmojo"
FILL_BLANK_FIELDS = ("first_name", "last_name", "phone")


def _common(resp: UpstreamResponse) -> dict[str, Any]:
    return {
        "status_code": resp.status_code,
        "duration_ms": resp.duration_ms,
        "response_body": resp.kept_body,
    }


def classify_write(resp: UpstreamResponse, kind: str) -> Outcome:
    """A subscribe or update: any 2xx is done; ``ref`` records which write it was."""
    if 200 <= resp.status_code < 300:
        return Outcome(AttemptOutcome.DELIVERED, reason=None, ref=kind, **_common(resp))
    return classify_http_error(resp, NAME, _common(resp))


def classify_failure(exc: UpstreamError) -> Outcome:
    """No answer from Mailmojo (timeout, network, unreadable): retried."""
    return classify_error(exc, NAME)


def unchanged(read: UpstreamResponse) -> Outcome:
    """The contact already matches: delivered without a write (a replay lands here)."""
    return Outcome(AttemptOutcome.DELIVERED, reason=None, ref="unchanged", **_common(read))


def parse_contact(body: Any, email: str) -> Contact | None:
    """The contact of a 200, or None when the body is not clearly this contact."""
    if not isinstance(body, dict):
        return None
    got = body.get("email")
    if not isinstance(got, str) or got.strip().lower() != email.strip().lower():
        return None
    tags = body.get("tags")
    if tags is None:
        tags = []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        return None
    associations = body.get("list_associations")
    lists: frozenset[str] | None = None
    if isinstance(associations, list):
        lists = frozenset(
            str(a["list_id"])
            for a in associations
            if isinstance(a, dict) and a.get("list_id") is not None
        )
    status = body.get("status")
    return Contact(
        fields={key: body.get(key) for key in FILL_BLANK_FIELDS},
        tags=list(tags),
        lists=lists,
        status=status if isinstance(status, str) else None,
    )


def classify_contact_read(got: UpstreamResponse, email: str) -> Outcome | Contact | None:
    """The contact as Mailmojo holds it, None for "no such contact" (404), or the outcome that
    ends the attempt before any write (auth, throttling, outage, or an unclear answer: writing
    then could overwrite values the fill-blank rule must keep, or drop external tags)."""
    code = got.status_code
    if code == 404:
        return None
    if code == 200:
        contact = parse_contact(got.json, email)
        if contact is not None:
            return contact
        return Outcome(
            AttemptOutcome.RETRY,
            reason="Mailmojo's contact read gave no readable contact; retried without writing",
            **_common(got),
        )
    if 200 <= code < 300:
        return Outcome(
            AttemptOutcome.RETRY,
            reason=f"Mailmojo's contact read answered HTTP {code}; retried without writing",
            **_common(got),
        )
    return classify_http_error(got, NAME, _common(got))
