"""CleverTap -> Mailmodo (or Mailmojo), inbound: a CleverTap webhook call becomes one delivery
per recipient, stored before the 200.

The call is read by CleverTap's parser (``app.clevertap.source`` -> ``Recipient``), the
contact rules decide who is skipped (``app.contacts.rules``), and each delivery's payload is
the body the upstream will receive, or for a contact sync its plan (``app.mailmodo.bodies``,
``app.mailmojo.bodies``).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from app.clevertap.source import ParsedCall, ShapeError, parse_call
from app.clock import utcnow
from app.contacts.rules import skip_guests
from app.inbound.dedup import call_dedup_key
from app.inbound.service import (
    InboundCall,
    InboundError,
    WebhookKind,
    check_target,
    clevertap_credential,
    header_map,
    secret_matches,
)
from app.mailmodo.bodies import stored_payload
from app.mailmojo import bodies as mailmojo_bodies
from app.outbox.models import CallStatus, Direction, Operation, Source, Upstream
from app.outbox.schemas import IdentityObservation, IngestRecord, IngestResult, NewDelivery
from app.security import Credentials
from app.upstreams import UPSTREAM_OF

ROUTES: dict[Operation, str] = {
    Operation.CAMPAIGN_TRIGGER: "clevertap.campaign",
    Operation.JOURNEY_START: "clevertap.journey.start",
    Operation.JOURNEY_ABORT: "clevertap.journey.abort",
    Operation.LIST_SYNC: "clevertap.list.sync",
    Operation.MAILMOJO_SYNC: "clevertap.mailmojo.list.sync",
    Operation.CONTACT_UNSUBSCRIBE: "clevertap.consent.unsubscribe",
    Operation.CONTACT_RESUBSCRIBE: "clevertap.consent.resubscribe",
}
TARGET_NAMES = {
    Operation.CAMPAIGN_TRIGGER: "campaign id",
    Operation.JOURNEY_START: "journey id",
    Operation.JOURNEY_ABORT: "journey id",
    Operation.LIST_SYNC: "list name",
    Operation.MAILMOJO_SYNC: "Mailmojo list id",
    Operation.CONTACT_UNSUBSCRIBE: "",
    Operation.CONTACT_RESUBSCRIBE: "",
}
#: Skipped entries an answer explains one by one; the rest are counted.
MAX_SKIPPED_REASONS = 100
#: The contact syncs: guests are skipped (R5) and the payload is a plan (``bodies.sync_plan``).
CONTACT_SYNCS = frozenset({Operation.LIST_SYNC, Operation.MAILMOJO_SYNC})
DIRECTIONS = {
    Upstream.MAILMODO: Direction.CLEVERTAP_TO_MAILMODO,
    Upstream.MAILMOJO: Direction.CLEVERTAP_TO_MAILMOJO,
}
UNAUTHORIZED = InboundError(
    401,
    "unauthorized",
    "send the bridge's CleverTap secret as the Basic-auth password (any user name) "
    "or in the X-Bridge-Secret header",
)


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
    upstream = UPSTREAM_OF[operation]
    direction = DIRECTIONS[upstream]
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
                upstream=upstream,
                direction=direction,
                target=target,
                email=email_key,
                clevertap_id=recipient.clevertap_id,
                payload=(
                    mailmojo_bodies.stored_payload(
                        recipient, target, tag_prefix=tag_prefix, tags_field=tags_field
                    )
                    if upstream is Upstream.MAILMOJO
                    else stored_payload(
                        operation, recipient, target, tag_prefix=tag_prefix, tags_field=tags_field
                    )
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
    if operation in CONTACT_SYNCS:
        parsed = skip_guests(parsed)
    if parsed.kind != "test" and not parsed.recipients:
        detail: dict[str, Any] = {"skipped": skipped_reasons(parsed)}
        if len(parsed.skipped) > MAX_SKIPPED_REASONS:
            detail["skipped_omitted"] = len(parsed.skipped) - MAX_SKIPPED_REASONS
        raise InboundError(422, "no valid recipient", detail)
    return parsed


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
        body["skipped_reasons"] = skipped_reasons(parsed)
        if len(parsed.skipped) > MAX_SKIPPED_REASONS:
            body["skipped_reasons_omitted"] = len(parsed.skipped) - MAX_SKIPPED_REASONS
    return body


def skipped_reasons(parsed: ParsedCall) -> list[dict[str, Any]]:
    """Why the first ``MAX_SKIPPED_REASONS`` entries were skipped: a call of 500,000 entries
    without an email would otherwise be answered with 26 MB (``skipped`` counts them all)."""
    return [s.as_dict() for s in parsed.skipped[:MAX_SKIPPED_REASONS]]


class CleverTapCall(WebhookKind[ParsedCall]):
    """One CleverTap webhook route (one per operation): secret in Basic auth or a header,
    dedup by ``Idempotency-Key`` or body hash."""

    source = Source.CLEVERTAP
    unauthorized = UNAUTHORIZED

    def __init__(self, operation: Operation) -> None:
        self.operation = operation
        self.route = ROUTES[operation]
        self.target_name = TARGET_NAMES[operation]

    def authenticated(self, request: Request, credentials: Credentials, secret: str | None) -> bool:
        return secret_matches(clevertap_credential(request), credentials.clevertap_secrets)

    def check_target(self, target: str | None) -> str | None:
        target = check_target(target or "", self.target_name)
        if self.operation is not Operation.MAILMOJO_SYNC:
            return target
        if not (target.isascii() and target.isdecimal()):
            # Mailmojo's list ids are numbers; anything else would only fail at delivery.
            raise InboundError(
                422,
                f"invalid {self.target_name}",
                {"hint": "the number of the Mailmojo list (Lists, in the list's URL)"},
            )
        # As Mailmojo writes it: "01" is list 1, compared with the contact's lists as text.
        return str(int(target))

    def parse(self, payload: Any, target: str | None) -> ParsedCall:
        return parse_or_reject(payload, self.operation)

    def dedup_key(self, call: InboundCall, parsed: ParsedCall) -> str:
        return call_dedup_key(
            f"{self.route}:{call.target}",
            header_map(call.request).get("idempotency-key"),
            call.body,
        )

    def record(self, parsed: ParsedCall, call: InboundCall, dedup_key: str | None) -> IngestRecord:
        settings = call.settings
        return build_record(
            operation=self.operation,
            target=call.target or "",
            parsed=parsed,
            body=call.body,
            content_type=call.content_type,
            dedup_key=dedup_key,
            request_id=call.request_id,
            tag_prefix=settings.contact_tag_prefix,
            tags_field=settings.contact_tags_field,
        )

    def answer(self, result: IngestResult, parsed: ParsedCall) -> dict[str, Any]:
        return answer(result, parsed)


CAMPAIGN_TRIGGER = CleverTapCall(Operation.CAMPAIGN_TRIGGER)
JOURNEY_START = CleverTapCall(Operation.JOURNEY_START)
JOURNEY_ABORT = CleverTapCall(Operation.JOURNEY_ABORT)
LIST_SYNC = CleverTapCall(Operation.LIST_SYNC)
MAILMOJO_SYNC = CleverTapCall(Operation.MAILMOJO_SYNC)


class ConsentCall(CleverTapCall):
    """An opt-out or opt-in made in CleverTap (``/clevertap/consent/...``): the same auth,
    bodies, test call, dedup and answers as the other CleverTap routes; one Mailmodo
    unsubscribe or resubscribe per recipient, with no path id."""

    def check_target(self, target: str | None) -> str | None:
        """The path names no campaign, journey or list."""
        return target

    def record(self, parsed: ParsedCall, call: InboundCall, dedup_key: str | None) -> IngestRecord:
        record = super().record(parsed, call, dedup_key)
        record.target = None
        for delivery in record.deliveries:
            delivery.target = None
        return record


CONSENT_UNSUBSCRIBE = ConsentCall(Operation.CONTACT_UNSUBSCRIBE)
CONSENT_RESUBSCRIBE = ConsentCall(Operation.CONTACT_RESUBSCRIBE)
