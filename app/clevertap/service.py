"""CleverTap webhook calls become one Mailmodo delivery per recipient, stored before the 200."""

from __future__ import annotations

from typing import Any

from app.clevertap.source import ParsedCall, ShapeError, parse_call
from app.clock import utcnow
from app.contacts.rules import skip_guests
from app.inbound.service import InboundError
from app.mailmodo.bodies import stored_payload
from app.outbox.models import CallStatus, Direction, Operation, Source, Upstream
from app.outbox.schemas import IdentityObservation, IngestRecord, IngestResult, NewDelivery
from app.outbox.writer import Writer

ROUTES: dict[Operation, str] = {
    Operation.CAMPAIGN_TRIGGER: "clevertap.campaign",
    Operation.JOURNEY_START: "clevertap.journey.start",
    Operation.JOURNEY_ABORT: "clevertap.journey.abort",
    Operation.LIST_SYNC: "clevertap.list.sync",
}


def build_record(
    *,
    operation: Operation,
    target: str,
    parsed: ParsedCall,
    body: bytes,
    content_type: str | None,
    dedup_key: str | None,
    request_id: str | None,
    tag_prefix: str = "ct_",
    tags_field: str = "tags",
) -> IngestRecord:
    """The inbound call, its deliveries and the identities it teaches us, as one record."""
    now = utcnow()
    record = IngestRecord(
        source=Source.CLEVERTAP,
        route=ROUTES[operation],
        target=target,
        status=CallStatus.TEST if parsed.kind == "test" else CallStatus.ACCEPTED,
        http_status=200,
        received_at=now,
        body=body.decode("utf-8", errors="replace"),
        content_type=content_type,
        dedup_key=None if parsed.kind == "test" else dedup_key,
        skipped=len(parsed.skipped),
        request_id=request_id,
    )
    if parsed.skipped:
        record.reason = "; ".join(f"#{s.index}: {s.reason}" for s in parsed.skipped[:20])
    for recipient in parsed.recipients:
        email_key = recipient.email.lower()
        record.deliveries.append(
            NewDelivery(
                operation=operation,
                upstream=Upstream.MAILMODO,
                direction=Direction.CLEVERTAP_TO_MAILMODO,
                target=target,
                email=email_key,
                clevertap_id=recipient.clevertap_id,
                payload=stored_payload(
                    operation, recipient, target, tag_prefix=tag_prefix, tags_field=tags_field
                ),
                next_attempt_at=now,
            )
        )
        if recipient.clevertap_id is not None:
            record.identities.append(
                IdentityObservation(email_key, recipient.clevertap_id, ROUTES[operation])
            )
    return record


def parse_or_reject(body: Any, operation: Operation | None = None) -> ParsedCall:
    """Parse, turning an unknown shape or a call without one valid recipient into a 422."""
    try:
        parsed = parse_call(body)
    except ShapeError as exc:
        raise InboundError(422, exc.message, exc.detail) from None
    if operation is Operation.LIST_SYNC:
        parsed = skip_guests(parsed)
    if parsed.kind != "test" and not parsed.recipients:
        raise InboundError(
            422, "no valid recipient", {"skipped": [s.as_dict() for s in parsed.skipped]}
        )
    return parsed


async def accept_call(
    writer: Writer,
    *,
    operation: Operation,
    target: str,
    body: bytes,
    payload: Any,
    content_type: str | None,
    dedup_key: str | None,
    request_id: str | None,
    tag_prefix: str = "ct_",
    tags_field: str = "tags",
) -> dict[str, Any]:
    """Store the call and answer with what was accepted; raises ``InboundError`` (422)."""
    parsed = parse_or_reject(payload, operation)
    record = build_record(
        operation=operation,
        target=target,
        parsed=parsed,
        body=body,
        content_type=content_type,
        dedup_key=dedup_key,
        request_id=request_id,
        tag_prefix=tag_prefix,
        tags_field=tags_field,
    )
    result: IngestResult = await writer.submit(record)
    return answer(result, parsed)


def answer(result: IngestResult, parsed: ParsedCall) -> dict[str, Any]:
    if parsed.kind == "test":
        return {"accepted": 0, "duplicates": 0, "skipped": 0, "ids": [], "test": True}
    body: dict[str, Any] = {
        "accepted": 0 if result.duplicate else len(result.delivery_ids),
        "duplicates": len(result.delivery_ids) if result.duplicate else 0,
        "skipped": result.skipped,
        "ids": result.delivery_ids,
    }
    if parsed.skipped:
        body["skipped_reasons"] = [s.as_dict() for s in parsed.skipped]
    return body
