"""Mailmodo activity callbacks become CleverTap ``MM …`` events in the outbox.

The CleverTap ID comes from the payload, else from the identity table (looked up by the
writer inside the ingest transaction), else ``BRIDGE_UNRESOLVED_IDENTITY`` decides: park the
event until a CleverTap call teaches us the ID, send it keyed by email, or keep it as dropped.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from app.activity import Activity
from app.clevertap.bodies import map_activity
from app.clock import utcnow
from app.config import Settings
from app.inbound.service import InboundError
from app.mailmodo.source import CallbackError, parse_callback
from app.outbox.models import CallStatus, Direction, Operation, Source, Upstream
from app.outbox.schemas import IdentityObservation, IngestRecord, IngestResult, NewDelivery
from app.outbox.writer import Writer

ROUTE = "mailmodo.events"


def parse_or_reject(payload: Any, path_event: str | None) -> list[Activity]:
    try:
        events = parse_callback(payload, path_event=path_event)
    except CallbackError as exc:
        raise InboundError(422, exc.message, exc.detail) from None
    if not events:
        raise InboundError(422, "no activity event in the body", None)
    return events


def callback_dedup_key(events: list[Activity], path_event: str | None, body: bytes) -> str:
    """The payload's own ids when it has them (event_id, responseId, journey tuple), else a
    hash of the exact body and the event named by the path."""
    ids = [e.dedup_id for e in events]
    if all(ids):
        joined = "|".join(ids)
        if len(joined) > 200:
            joined = hashlib.sha256(joined.encode()).hexdigest()
        return f"{ROUTE}:id:{joined}"
    digest = hashlib.sha256(body).hexdigest()
    # The normalised type, so /events/opened and /events/Opened are the same event.
    named = events[0].type.value if path_event else ""
    return f"{ROUTE}:{named}:sha256:{digest}"


def build_record(
    settings: Settings,
    *,
    events: list[Activity],
    path_event: str | None,
    body: bytes,
    content_type: str | None,
    dedup_key: str | None,
    request_id: str | None,
) -> IngestRecord:
    now = utcnow()
    received_epoch = int(now.timestamp())
    park_until = now + timedelta(hours=settings.park_ttl_hours)
    record = IngestRecord(
        source=Source.MAILMODO,
        route=ROUTE,
        # The normalised type, not the raw path segment (which may be any text).
        target=events[0].type.value if path_event else None,
        status=CallStatus.ACCEPTED,
        http_status=200,
        received_at=now,
        body=body.decode("utf-8", errors="replace"),
        content_type=content_type,
        dedup_key=dedup_key,
        request_id=request_id,
    )
    for event in events:
        email = event.email.lower() if event.email else None
        if email and event.clevertap_id:
            record.identities.append(
                IdentityObservation(email, event.clevertap_id, "mailmodo.callback")
            )
        for mapped in map_activity(
            event,
            received_at_epoch=received_epoch,
            max_properties=settings.clevertap_max_event_properties,
        ):
            record.deliveries.append(
                NewDelivery(
                    operation=Operation.EVENT_UPLOAD,
                    upstream=Upstream.CLEVERTAP,
                    direction=Direction.MAILMODO_TO_CLEVERTAP,
                    target=mapped.name,
                    email=email,
                    clevertap_id=event.clevertap_id,
                    payload=mapped.to_json(),
                    next_attempt_at=now,
                    identity_policy=(
                        None if event.clevertap_id else settings.unresolved_identity.value
                    ),
                    park_until=park_until,
                )
            )
    return record


async def accept_callback(
    writer: Writer,
    settings: Settings,
    *,
    payload: Any,
    path_event: str | None,
    body: bytes,
    content_type: str | None,
    request_id: str | None,
) -> dict[str, Any]:
    """Store the callback's events and answer with what was accepted; raises 422."""
    events = parse_or_reject(payload, path_event)
    key = (
        callback_dedup_key(events, path_event, body) if settings.dedup_window_seconds > 0 else None
    )
    record = build_record(
        settings,
        events=events,
        path_event=path_event,
        body=body,
        content_type=content_type,
        dedup_key=key,
        request_id=request_id,
    )
    result: IngestResult = await writer.submit(record)
    n = len(result.delivery_ids)
    return {
        "accepted": 0 if result.duplicate else n,
        "duplicates": n if result.duplicate else 0,
        "skipped": 0,
        "ids": result.delivery_ids,
    }
