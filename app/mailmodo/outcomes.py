"""What Mailmodo's answers mean for a delivery: the only place that knows its status codes
and body shapes.

==========================  ===================================================
2xx and not ``success:false`` delivered (``ref`` kept)
2xx with ``success: false``  failed for good, reason kept
anything else                the generic taxonomy of ``app.upstream``
==========================  ===================================================

A contact read (``getContactDetails``, before a list sync) is read here too: a clear "no such
contact" is an empty contact, an unclear answer ends the attempt rather than risk overwriting
values the fill-blank rule must keep.
"""

from __future__ import annotations

from typing import Any

from app.upstream import (
    AttemptOutcome,
    Outcome,
    UpstreamError,
    UpstreamResponse,
    answer_reason,
    classify_error,
    classify_http_error,
)

NAME = "Mailmodo"


def _common(resp: UpstreamResponse) -> dict[str, Any]:
    return {
        "status_code": resp.status_code,
        "duration_ms": resp.duration_ms,
        "response_body": resp.kept_body,
    }


def classify_mailmodo(resp: UpstreamResponse) -> Outcome:
    """Mailmodo answers 200 with ``success: false`` for some failures: always check it."""
    code = resp.status_code
    body = resp.json
    common = _common(resp)
    if 200 <= code < 300:
        if isinstance(body, dict) and body.get("success") is False:
            return Outcome(
                AttemptOutcome.FAILED, reason=answer_reason(resp, "Mailmodo refused:"), **common
            )
        ref = body.get("ref") if isinstance(body, dict) else None
        return Outcome(
            AttemptOutcome.DELIVERED,
            reason=None,
            ref=str(ref) if ref is not None else None,
            **common,
        )
    return classify_http_error(resp, NAME, common)


def classify_failure(exc: UpstreamError) -> Outcome:
    """No answer from Mailmodo (timeout, network, unreadable): retried."""
    return classify_error(exc, NAME)


_NOT_FOUND_WORDS = ("not found", "does not exist", "doesn't exist", "no contact", "not exist")


def existing_contact(got: UpstreamResponse) -> dict[str, Any] | None:
    """The contact's properties; ``{}`` for a clear "no such contact"; None when unclear."""
    body = got.json
    message = str(body.get("message", "")).lower() if isinstance(body, dict) else ""
    if got.status_code == 404 or any(word in message for word in _NOT_FOUND_WORDS):
        return {}
    if got.status_code == 200 and isinstance(body, dict):
        if body.get("success") is False:
            return {}
        data = body.get("data")
        return data if isinstance(data, dict) else {}
    return None


def classify_contact_read(got: UpstreamResponse) -> Outcome | dict[str, Any]:
    """The contact's current properties, or the outcome that ends the attempt before the
    write (auth, throttling, outage, or an answer that is not clearly a contact)."""
    code = got.status_code
    if code in (401, 403, 408, 429) or code >= 500:
        return classify_http_error(got, NAME, _common(got))
    existing = existing_contact(got)
    if existing is not None:
        return existing
    # Neither a contact nor a clear "no such contact": writing now could overwrite values
    # the fill-blank rule must keep.
    if code == 200:
        return Outcome(
            AttemptOutcome.RETRY,
            status_code=code,
            reason="Mailmodo's contact read gave no readable contact; retried",
            duration_ms=got.duration_ms,
            response_body=got.kept_body,
        )
    return classify_http_error(got, NAME, _common(got))
