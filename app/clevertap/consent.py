"""What the bridge tells CleverTap about email consent (clevertap.md, last section).

* ``profile`` (``consent.profile`` rows): a profile record in the same ``/1/upload`` batches
  as the events, ``{"objectId", "type": "profile", "profileData": {"MSG-email": false}}``:
  that one profile stops receiving email. Keyed by ``objectId`` (the send's CleverTap ID),
  never by writing ``Email``, which could merge profiles.
* ``subscribe_api`` (``consent.subscribe`` rows): ``POST /1/subscribe`` with
  ``{"type": "email", "value": <address>, "status": "Unsubscribe"}``: every profile that has
  the address. Batched like uploads (up to 1000 records per request).
"""

from __future__ import annotations

from typing import Any

import orjson

from app.outbox.models import Operation

SUBSCRIBE_PATH = "/1/subscribe"
UPLOAD_PATH = "/1/upload"


def consent_payload(operation: str, email: str | None, *, state: str, source: str) -> str:
    """The stored payload of a consent row: the record's body (``profileData`` for a profile
    record, the subscribe record itself) and, for the consent log, the state and its source."""
    stored: dict[str, Any] = {"state": state, "source": source}
    if operation == Operation.CONSENT_SUBSCRIBE.value:
        stored["record"] = {"type": "email", "value": email, "status": "Unsubscribe"}
    else:
        stored["profileData"] = {"MSG-email": False}
    return orjson.dumps(stored).decode()


def consent_facts(payload: str) -> tuple[str, str]:
    """The (state, source) a consent row's payload carries."""
    stored = orjson.loads(payload)
    return str(stored.get("state", "unsubscribed")), str(stored.get("source", "mailmodo"))


def consent_record(
    operation: str, payload: str, *, clevertap_id: str | None, email: str | None
) -> dict[str, Any] | None:
    """The record of a consent row; None when it cannot be addressed."""
    stored = orjson.loads(payload)
    if operation == Operation.CONSENT_SUBSCRIBE.value:
        sub = stored.get("record")
        return dict(sub) if isinstance(sub, dict) and sub.get("value") else None
    if not (clevertap_id or email):
        return None
    profile: dict[str, Any] = dict(stored["profileData"])
    record: dict[str, Any] = {"type": "profile", "profileData": profile}
    if clevertap_id:
        record["objectId"] = clevertap_id
    else:
        record["identity"] = email
    return record


def endpoint_of(operation: str) -> str:
    """Which CleverTap path a row's record is posted to."""
    return SUBSCRIBE_PATH if operation == Operation.CONSENT_SUBSCRIBE.value else UPLOAD_PATH
