"""CleverTap webhook routes: authenticate, read, hand to the service, answer."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.clevertap.service import ROUTES, accept_call
from app.inbound.router import WebhookRoute
from app.inbound.service import (
    InboundError,
    check_target,
    clevertap_credential,
    dedup_key,
    handle_webhook,
    request_id,
    secret_matches,
)
from app.outbox.models import Operation, Source
from app.state import bridge

TARGET_NAMES = {
    Operation.CAMPAIGN_TRIGGER: "campaign id",
    Operation.JOURNEY_START: "journey id",
    Operation.JOURNEY_ABORT: "journey id",
    Operation.LIST_SYNC: "list name",
}

router = APIRouter(prefix="/clevertap", tags=["CleverTap webhooks"], route_class=WebhookRoute)

UNAUTHORIZED = InboundError(
    401,
    "unauthorized",
    "send the bridge's CleverTap secret as the Basic-auth password (any user name) "
    "or in the X-Bridge-Secret header",
)


async def handle(request: Request, operation: Operation, target: str) -> Response:
    state = bridge(request)
    settings = state.settings
    route = ROUTES[operation]

    async def accept(body: bytes, payload: Any, content_type: str | None) -> dict[str, Any]:
        check_target(target, TARGET_NAMES[operation])
        return await accept_call(
            state.writer,
            operation=operation,
            target=target,
            body=body,
            payload=payload,
            content_type=content_type,
            dedup_key=(
                dedup_key(f"{route}:{target}", request, body)
                if settings.dedup_window_seconds > 0
                else None
            ),
            request_id=request_id(request),
            tag_prefix=settings.contact_tag_prefix,
            tags_field=settings.contact_tags_field,
        )

    return await handle_webhook(
        request,
        writer=state.writer,
        settings=settings,
        source=Source.CLEVERTAP,
        route=route,
        target=target,
        authenticated=secret_matches(
            clevertap_credential(request), state.credentials.clevertap_secrets
        ),
        unauthorized=UNAUTHORIZED,
        accept=accept,
    )


_RESPONSES: dict[int | str, dict[str, str]] = {
    200: {"description": "Stored; `{accepted, duplicates, skipped, ids}`"},
    400: {"description": "Malformed JSON"},
    401: {"description": "Missing or wrong secret"},
    413: {"description": "Body over BRIDGE_MAX_BODY_BYTES"},
    415: {"description": "Not JSON"},
    422: {"description": "JSON of an unknown shape, or no valid recipient"},
    503: {"description": "The database is unavailable; retry"},
}


@router.post(
    "/campaigns/{campaign_id}",
    responses=_RESPONSES,
    summary="Trigger a Mailmodo campaign for every recipient",
)
async def trigger_campaign(campaign_id: str, request: Request) -> Response:
    return await handle(request, Operation.CAMPAIGN_TRIGGER, campaign_id)


@router.post(
    "/journeys/{journey_id}/start",
    responses=_RESPONSES,
    summary="Start a Mailmodo journey for every recipient",
)
async def start_journey(journey_id: str, request: Request) -> Response:
    return await handle(request, Operation.JOURNEY_START, journey_id)


@router.post(
    "/journeys/{journey_id}/abort",
    responses=_RESPONSES,
    summary="Abort a Mailmodo journey for every recipient",
)
async def abort_journey(journey_id: str, request: Request) -> Response:
    return await handle(request, Operation.JOURNEY_ABORT, journey_id)


@router.post(
    "/lists/{list_name}/contacts",
    responses=_RESPONSES,
    summary="Sync every profile in the call into a Mailmodo list (fill-blank rules)",
)
async def sync_contacts(list_name: str, request: Request) -> Response:
    return await handle(request, Operation.LIST_SYNC, list_name)
