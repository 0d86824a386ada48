"""Mailmodo callback routes. Mailmodo's webhook cards send no headers and no query
parameters, so the secret is a path segment (masked wherever a path is logged)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from app.inbound.router import WebhookRoute
from app.inbound.service import InboundError, handle_webhook, request_id, secret_matches
from app.mailmodo.service import ROUTE, accept_callback
from app.outbox.models import Source
from app.state import bridge

router = APIRouter(prefix="/mailmodo", tags=["Mailmodo callbacks"], route_class=WebhookRoute)

UNAUTHORIZED = InboundError(
    401, "unauthorized", "the path must carry one of BRIDGE_MAILMODO_WEBHOOK_SECRETS"
)

_RESPONSES: dict[int | str, dict[str, str]] = {
    200: {"description": "Stored; `{accepted, duplicates, skipped, ids}`"},
    400: {"description": "Malformed JSON"},
    401: {"description": "Wrong secret in the path"},
    413: {"description": "Body over BRIDGE_MAX_BODY_BYTES"},
    415: {"description": "Not JSON"},
    422: {"description": "JSON that is not a Mailmodo callback the bridge understands"},
    503: {"description": "The database is unavailable; retry"},
}


async def handle(request: Request, secret: str, path_event: str | None) -> Response:
    state = bridge(request)

    async def accept(body: bytes, payload: Any, content_type: str | None) -> dict[str, Any]:
        return await accept_callback(
            state.writer,
            state.settings,
            payload=payload,
            path_event=path_event,
            body=body,
            content_type=content_type,
            request_id=request_id(request),
        )

    return await handle_webhook(
        request,
        writer=state.writer,
        settings=state.settings,
        source=Source.MAILMODO,
        route=ROUTE,
        target=path_event,
        authenticated=secret_matches(secret, state.credentials.mailmodo_secrets),
        unauthorized=UNAUTHORIZED,
        accept=accept,
    )


SecretPath = Path(description="One of BRIDGE_MAILMODO_WEBHOOK_SECRETS")


@router.post("/{secret}/events", responses=_RESPONSES, summary="A Mailmodo activity callback")
async def events(request: Request, secret: str = SecretPath) -> Response:
    return await handle(request, secret, None)


@router.post(
    "/{secret}/events/{event}",
    responses=_RESPONSES,
    summary="A Mailmodo callback whose event type is given by the path (journey webhook cards)",
)
async def events_of_type(
    request: Request,
    event: str,
    secret: str = SecretPath,
) -> Response:
    return await handle(request, secret, event)
