"""Every inbound dedup key, computed here: a retried call stores nothing new.

* CleverTap calls: ``<route>:<target>:idem:<Idempotency-Key>`` when the header is given, else
  ``<route>:<target>:sha256:<hash of the exact body>`` (CleverTap's retries repeat it).
* Mailmodo callbacks: ``mailmodo.events:id:<ids>`` from the payload's own event ids (event_id,
  responseId, the journey tuple) when every event has one, else a hash of the exact body and
  the event named by the path. An array whose items all carry an id is stored one call per
  item (``from_mailmodo.MailmodoCallback.records``), each keyed ``mailmodo.events:id:<its id>``,
  the key the same event has when it comes alone.

A key always fits its column: longer ones are hashed whole, so two long keys never collide by
sharing a prefix.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from app.activity import Activity

MAX_DEDUP_KEY = 200


def call_dedup_key(scope: str, idempotency_key: str | None, body: bytes) -> str:
    """``Idempotency-Key`` when given, else a hash of the exact body (retries repeat it)."""
    if idempotency_key:
        key = f"{scope}:idem:{idempotency_key.strip()}"
    else:
        key = f"{scope}:sha256:{hashlib.sha256(body).hexdigest()}"
    if len(key) <= MAX_DEDUP_KEY:
        return key
    return f"sha256:{hashlib.sha256(key.encode()).hexdigest()}"


def keyed_by_body(key: str) -> bool:
    """Whether ``key`` is a hash of the call's body (no ``Idempotency-Key`` was given): only
    then can two different calls share it."""
    return ":sha256:" in key


def callback_dedup_key(
    route: str, activities: Sequence[Activity], path_event: str | None, body: bytes
) -> str:
    """The payload's own ids when it has them (event_id, responseId, journey tuple), else a
    hash of the exact body and the event named by the path."""
    ids = [a.dedup_id for a in activities]
    if all(ids):
        joined = "|".join(ids)
        if len(joined) > MAX_DEDUP_KEY:
            joined = hashlib.sha256(joined.encode()).hexdigest()
        return f"{route}:id:{joined}"
    digest = hashlib.sha256(body).hexdigest()
    # The normalised type, so /events/opened and /events/Opened are the same event.
    named = activities[0].type.value if path_event else ""
    return f"{route}:{named}:sha256:{digest}"
