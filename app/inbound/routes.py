"""Every webhook route, thin: each hands its request and path ids to the inbound line
(``app.inbound.service.receive``) with the kind of call it is. OpenAPI documents them; the
dispatcher (``app.inbound.router``) serves them."""

from __future__ import annotations

from fastapi import APIRouter, Path, Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from app.inbound.from_clevertap import (
    CAMPAIGN_TRIGGER,
    CONSENT_RESUBSCRIBE,
    CONSENT_UNSUBSCRIBE,
    JOURNEY_ABORT,
    JOURNEY_START,
    LIST_SYNC,
    MAILMOJO_SYNC,
    CleverTapCall,
)
from app.inbound.from_mailmodo import MAILMODO_CALLBACK
from app.inbound.router import WebhookRoute
from app.inbound.service import receive
from app.state import bridge

# --- CleverTap webhooks ----------------------------------------------------------------------

clevertap_router = APIRouter(
    prefix="/clevertap", tags=["CleverTap webhooks"], route_class=WebhookRoute
)

_CLEVERTAP_RESPONSES: dict[int | str, dict[str, str]] = {
    200: {"description": "Stored; `{accepted, duplicates, skipped, ids}`"},
    400: {"description": "Malformed JSON"},
    401: {"description": "Missing or wrong secret"},
    413: {"description": "Body over BRIDGE_MAX_BODY_BYTES"},
    415: {"description": "Not JSON"},
    422: {"description": "JSON of an unknown shape, or no valid recipient"},
    503: {"description": "The database is unavailable; retry"},
}


async def _clevertap(request: Request, kind: CleverTapCall, target: str | None) -> Response:
    state = bridge(request)
    return await receive(
        request,
        kind,
        writer=state.writer,
        settings=state.settings,
        credentials=state.credentials,
        target=target,
    )


@clevertap_router.post(
    "/campaigns/{campaign_id}",
    responses=_CLEVERTAP_RESPONSES,
    summary="Trigger a Mailmodo campaign for every recipient",
)
async def trigger_campaign(campaign_id: str, request: Request) -> Response:
    return await _clevertap(request, CAMPAIGN_TRIGGER, campaign_id)


@clevertap_router.post(
    "/journeys/{journey_id}/start",
    responses=_CLEVERTAP_RESPONSES,
    summary="Start a Mailmodo journey for every recipient",
)
async def start_journey(journey_id: str, request: Request) -> Response:
    return await _clevertap(request, JOURNEY_START, journey_id)


@clevertap_router.post(
    "/journeys/{journey_id}/abort",
    responses=_CLEVERTAP_RESPONSES,
    summary="Abort a Mailmodo journey for every recipient",
)
async def abort_journey(journey_id: str, request: Request) -> Response:
    return await _clevertap(request, JOURNEY_ABORT, journey_id)


@clevertap_router.post(
    "/lists/{list_name}/contacts",
    responses=_CLEVERTAP_RESPONSES,
    summary="Sync every profile in the call into a Mailmodo list (fill-blank rules)",
)
async def sync_contacts(list_name: str, request: Request) -> Response:
    return await _clevertap(request, LIST_SYNC, list_name)


@clevertap_router.post(
    "/mailmojo/lists/{list_id}/contacts",
    responses=_CLEVERTAP_RESPONSES,
    summary="Sync every profile in the call into a Mailmojo list (contact-sync rules)",
)
async def sync_mailmojo_contacts(list_id: str, request: Request) -> Response:
    return await _clevertap(request, MAILMOJO_SYNC, list_id)


@clevertap_router.post(
    "/consent/unsubscribe",
    responses=_CLEVERTAP_RESPONSES,
    summary="These recipients opted out of email in CleverTap: unsubscribe them in Mailmodo",
)
async def consent_unsubscribe(request: Request) -> Response:
    return await _clevertap(request, CONSENT_UNSUBSCRIBE, None)


@clevertap_router.post(
    "/consent/resubscribe",
    responses=_CLEVERTAP_RESPONSES,
    summary="These recipients opted in again in CleverTap: resubscribe them in Mailmodo",
)
async def consent_resubscribe(request: Request) -> Response:
    return await _clevertap(request, CONSENT_RESUBSCRIBE, None)


# --- Mailmodo callbacks ----------------------------------------------------------------------
# Mailmodo's webhook cards send no headers and no query parameters, so the secret is a path
# segment (masked wherever a path is logged).

mailmodo_router = APIRouter(
    prefix="/mailmodo", tags=["Mailmodo callbacks"], route_class=WebhookRoute
)

_MAILMODO_RESPONSES: dict[int | str, dict[str, str]] = {
    200: {"description": "Stored; `{accepted, duplicates, skipped, ids}`"},
    400: {"description": "Malformed JSON"},
    401: {"description": "Wrong secret in the path"},
    413: {"description": "Body over BRIDGE_MAX_BODY_BYTES"},
    415: {"description": "Not JSON"},
    422: {"description": "JSON that is not a Mailmodo callback the bridge understands"},
    503: {"description": "The database is unavailable; retry"},
}


async def _mailmodo(request: Request, secret: str, path_event: str | None) -> Response:
    state = bridge(request)
    return await receive(
        request,
        MAILMODO_CALLBACK,
        writer=state.writer,
        settings=state.settings,
        credentials=state.credentials,
        target=path_event,
        secret=secret,
    )


SecretPath = Path(description="One of BRIDGE_MAILMODO_WEBHOOK_SECRETS")


@mailmodo_router.post(
    "/{secret}/events", responses=_MAILMODO_RESPONSES, summary="A Mailmodo activity callback"
)
async def events(request: Request, secret: str = SecretPath) -> Response:
    return await _mailmodo(request, secret, None)


@mailmodo_router.post(
    "/{secret}/events/{event}",
    responses=_MAILMODO_RESPONSES,
    summary="A Mailmodo callback whose event type is given by the path (journey webhook cards)",
)
async def events_of_type(
    request: Request,
    event: str,
    secret: str = SecretPath,
) -> Response:
    return await _mailmodo(request, secret, event)


async def _no_secret(request: Request) -> Response:
    """A callback whose path lacks the secret segment (the URL pasted without it) is refused,
    counted and logged like a wrong secret (401), not answered as an unknown path."""
    return await _mailmodo(request, "", None)


for _path in ("/events", "/events/{event}", "//events", "//events/{event}"):
    mailmodo_router.add_api_route(
        _path,
        _no_secret,
        methods=["POST"],
        include_in_schema=False,
        route_class_override=APIRoute,
    )
