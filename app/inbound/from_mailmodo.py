"""Mailmodo -> CleverTap, inbound: a Mailmodo activity callback becomes CleverTap ``MM …``
events in the outbox.

The callback is read by Mailmodo's parser (``app.mailmodo.source`` -> ``Activity``); each
activity becomes one or two CleverTap events (``app.clevertap.bodies``), stored as typed
``CleverTapEvent`` records.

The CleverTap ID comes from the payload, else from the identity table (looked up by the
writer inside the ingest transaction), else ``BRIDGE_UNRESOLVED_IDENTITY`` decides: park the
event until a CleverTap call teaches us the ID, send it keyed by email, or keep it as dropped.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
from starlette.requests import Request

from app.activity import Activity
from app.clevertap.bodies import map_activity
from app.clock import utcnow
from app.config import Settings
from app.consent.mapping import callback_opt_out
from app.consent.service import SOURCE_CALLBACK, Consent, consent_operation
from app.inbound.dedup import callback_dedup_key
from app.inbound.service import InboundCall, InboundError, WebhookKind, secret_matches
from app.mailmodo.source import CallbackError, parse_callback
from app.outbox.models import CallStatus, Direction, Operation, Source
from app.outbox.schemas import IdentityObservation, IngestRecord, IngestResult, NewDelivery
from app.security import Credentials
from app.upstreams import UPSTREAM_OF

ROUTE = "mailmodo.events"
UPLOAD_UPSTREAM = UPSTREAM_OF[Operation.EVENT_UPLOAD]
#: Bytes of an array's body stored with each of its items' calls at most (body x items);
#: beyond, each call keeps its own item.
WHOLE_BODY_BUDGET = 1 << 20
UNAUTHORIZED = InboundError(
    401, "unauthorized", "the path must carry one of BRIDGE_MAILMODO_WEBHOOK_SECRETS"
)


def parse_or_reject(payload: Any, path_event: str | None) -> list[Activity]:
    try:
        events = parse_callback(payload, path_event=path_event)
    except CallbackError as exc:
        raise InboundError(422, exc.message, exc.detail) from None
    if not events:
        raise InboundError(422, "no activity event in the body", None)
    return events


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
    consent_op = consent_operation(settings.consent_to_clevertap)
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
                    upstream=UPLOAD_UPSTREAM,
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
        opted_out = callback_opt_out(event)
        if consent_op is not None and opted_out is not None and email:
            # An unsubscribe, spam report or hard bounce: CleverTap stops mailing too.
            record.deliveries.append(
                Consent.from_settings(settings).consent_row(
                    consent_op, email, event.clevertap_id, opted_out.value, SOURCE_CALLBACK, now
                )
            )
    return record


def _item_bodies(parsed: list[Activity], payload: Any, body: bytes) -> list[bytes] | None:
    """The body each item's call keeps when an array is stored one call per item, or None
    when it is stored as one call (a single event, an item without an id, or an item nested
    past what orjson writes). The body as received while body x items stays under
    ``WHOLE_BODY_BUDGET``; beyond, each item re-serialised."""
    if len(parsed) < 2 or not isinstance(payload, list):
        return None
    if not all(activity.dedup_id for activity in parsed):
        return None
    if len(body) * len(parsed) <= WHOLE_BODY_BUDGET:
        return [body] * len(parsed)
    try:
        return [orjson.dumps(item) for item in payload]
    except orjson.JSONEncodeError:
        return None


class MailmodoCallback(WebhookKind[list[Activity]]):
    """Mailmodo's webhook cards send no headers, so the secret is a path segment; dedup by the
    payload's own event ids, else by body hash."""

    source = Source.MAILMODO
    route = ROUTE
    unauthorized = UNAUTHORIZED

    def authenticated(self, request: Request, credentials: Credentials, secret: str | None) -> bool:
        return secret_matches(secret, credentials.mailmodo_secrets)

    def parse(self, payload: Any, target: str | None) -> list[Activity]:
        return parse_or_reject(payload, target)

    def dedup_key(self, call: InboundCall, parsed: list[Activity]) -> str:
        return callback_dedup_key(ROUTE, parsed, call.target, call.body)

    def record(
        self, parsed: list[Activity], call: InboundCall, dedup_key: str | None
    ) -> IngestRecord:
        return build_record(
            call.settings,
            events=parsed,
            path_event=call.target,
            body=call.body,
            content_type=call.content_type,
            dedup_key=dedup_key,
            request_id=call.request_id,
        )

    def records(self, parsed: list[Activity], call: InboundCall) -> list[IngestRecord]:
        """An array of events that all carry their own ids is stored one call per event, each
        keyed by its id: an event seen before is a duplicate whichever array it came in (and
        a repeat inside the array too), while the new ones of the same array are accepted.
        The whole array's key is then never computed."""
        bodies = _item_bodies(parsed, call.payload, call.body) if call.deduplicated else None
        if bodies is None:
            return super().records(parsed, call)
        request_id = call.request_id
        return [
            build_record(
                call.settings,
                events=[activity],
                path_event=call.target,
                body=item_body,
                content_type=call.content_type,
                dedup_key=callback_dedup_key(ROUTE, [activity], call.target, b""),
                request_id=request_id,
            )
            for activity, item_body in zip(parsed, bodies, strict=True)
        ]

    def answer(self, result: IngestResult, parsed: list[Activity]) -> dict[str, Any]:
        return self.answer_all([result], parsed)

    def answer_all(self, results: list[IngestResult], parsed: list[Activity]) -> dict[str, Any]:
        accepted = sum(len(r.delivery_ids) for r in results if not r.duplicate)
        return {
            "accepted": accepted,
            "duplicates": sum(len(r.delivery_ids) for r in results if r.duplicate),
            "skipped": 0,
            "ids": [i for r in results for i in r.delivery_ids],
        }


MAILMODO_CALLBACK = MailmodoCallback()
