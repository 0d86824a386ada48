"""``/admin``: the operator's HTTP API, behind ``Authorization: Bearer <BRIDGE_ADMIN_TOKEN>``.

Handlers are plain ``def``: FastAPI runs them in its thread pool, where the synchronous
engine belongs. Every refusal, including FastAPI's own parameter validation, is answered as
``{"error", "detail"}`` like the webhook routes.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import Response

from app.admin import actions, insights, service
from app.admin.schemas import (
    ActionResult,
    DeliveryDetail,
    DeliveryPage,
    ErrorBody,
    FailureGroups,
    Filters,
    Overview,
    Person,
    PurgeRequest,
    PurgeResult,
    RejectedPage,
    ReplayRequest,
    ReplayResult,
    ResumeResult,
    Stats,
)
from app.admin.service import AdminError
from app.consent.view import PersonConsent
from app.consent.view import person as consent_view
from app.inbound.service import secret_matches
from app.outbox.models import Direction, Operation, Source, State, Upstream
from app.state import bridge


class AdminRoute(APIRoute):
    """Turns ``AdminError`` and request validation errors into the bridge's JSON errors."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def admin_handler(request: Request) -> Response:
            try:
                # Before FastAPI reads the body: a bad token gets 401 even with bad JSON.
                check_token(request)
                return await handler(request)
            except AdminError as exc:
                return exc.response()
            except RequestValidationError as exc:
                return service.invalid(_validation_detail(exc)).response()

        return admin_handler


def _validation_detail(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": [str(part) for part in err.get("loc", ())], "msg": str(err.get("msg", ""))}
        for err in exc.errors()
    ]


_bearer = HTTPBearer(auto_error=False, description="BRIDGE_ADMIN_TOKEN")


def require_admin(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Declares the bearer scheme in OpenAPI; the route class has checked it already."""
    check_token(request)


def check_token(request: Request) -> None:
    """Constant-time check of the bearer token in force (configured or generated)."""
    scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
    given = token.strip() if scheme.lower() == "bearer" else None
    if not secret_matches(given, (bridge(request).credentials.admin_token,)):
        raise AdminError(
            401,
            "unauthorized",
            "send Authorization: Bearer <BRIDGE_ADMIN_TOKEN> "
            "(`ctmm-bridge credentials` shows a generated one)",
            {"WWW-Authenticate": 'Bearer realm="ctmm-bridge admin"'},
        )


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "The body is not JSON (or not UTF-8)",
        401: "Missing or wrong bearer token",
        404: "No such delivery",
        409: "The delivery's state does not allow it",
        422: "Invalid filter, body, cursor or parameter",
    }
    return {c: {"model": ErrorBody, "description": text[c]} for c in (401, *codes)}


router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    route_class=AdminRoute,
    dependencies=[Depends(require_admin)],
)

Limit = Annotated[int, Query(ge=1, le=service.MAX_LIMIT, description="Page size")]
Cursor = Annotated[str | None, Query(description="`next_cursor` of the previous page")]
#: A delivery id in a path: out of the 64-bit range it is a 422, never a driver error.
DeliveryId = Annotated[int, Path(ge=1, le=service.MAX_ID, description="The delivery's id")]


@router.get(
    "/deliveries",
    summary="List deliveries, newest first, by filter",
    responses=_errors(422),
)
def list_deliveries(
    request: Request,
    direction: Direction | None = None,
    upstream: Upstream | None = None,
    state: Annotated[list[State] | None, Query(description="Repeatable")] = None,
    email: Annotated[str | None, Query(description="Recipient (case-insensitive)")] = None,
    target: Annotated[str | None, Query(description="Campaign/journey id or event name")] = None,
    operation: Operation | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    updated_after: Annotated[
        datetime | None, Query(description="Last changed at or after (a dead item: when it died)")
    ] = None,
    updated_before: datetime | None = None,
    status_code: Annotated[
        int | None, Query(ge=0, le=999, description="Last HTTP status; 0 = no answer came")
    ] = None,
    reason: Annotated[
        str | None, Query(description="The exact current reason; empty = no reason")
    ] = None,
    limit: Limit = service.DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> DeliveryPage:
    spec = Filters(
        direction=direction,
        upstream=upstream,
        states=state,
        email=email,
        target=target,
        operation=operation,
        created_after=created_after,
        created_before=created_before,
        updated_after=updated_after,
        updated_before=updated_before,
        status_code=status_code,
        reason=reason,
    )
    return service.list_deliveries(bridge(request).engine, spec, limit=limit, cursor=cursor)


@router.get(
    "/deliveries/{delivery_id}",
    summary="One delivery with its inbound call and every attempt",
    responses=_errors(404, 422),
)
def get_delivery(request: Request, delivery_id: DeliveryId) -> DeliveryDetail:
    return service.delivery_detail(bridge(request).engine, delivery_id)


@router.post(
    "/deliveries/{delivery_id}/retry",
    summary="Send one delivery again, due now, on a fresh retry schedule",
    description="Failed, dead, cancelled, dropped, parked or pending items become pending with "
    "their attempts reset to 0. A delivered item is sent again only with `force=true`.",
    responses=_errors(404, 409, 422),
)
def retry_delivery(
    request: Request,
    delivery_id: DeliveryId,
    force: Annotated[bool, Query(description="Also re-send a delivered item")] = False,
) -> ActionResult:
    return actions.retry_delivery(bridge(request).engine, delivery_id, force=force)


@router.post(
    "/deliveries/{delivery_id}/cancel",
    summary="Cancel a pending or parked delivery",
    responses=_errors(404, 409, 422),
)
def cancel_delivery(request: Request, delivery_id: DeliveryId) -> ActionResult:
    return actions.cancel_delivery(bridge(request).engine, delivery_id)


@router.post(
    "/replay",
    summary="Replay every delivery matching the filters (default states: failed, dead)",
    description="Requires `states` or a time range, so that an empty body never replays "
    "everything. Matching items become pending, due now, with attempts reset to 0; items a "
    "worker is sending at that moment are left alone. `dry_run` only counts.",
    responses=_errors(400, 422),
)
def replay(request: Request, body: ReplayRequest) -> ReplayResult:
    return actions.replay(bridge(request).engine, body)


@router.post(
    "/purge",
    summary="Delete finished deliveries older than `older_than`, in batches",
    description="States default to delivered, failed, dead, cancelled and dropped; age is "
    "the time since the item last changed. Attempts go with their delivery; inbound calls left "
    "without deliveries are deleted too. `dry_run` only counts.",
    responses=_errors(400, 422),
)
def purge(request: Request, body: PurgeRequest) -> PurgeResult:
    return actions.purge(bridge(request).engine, body)


@router.get(
    "/rejected",
    summary="Inbound calls that were refused, with the reason, newest first",
    responses=_errors(422),
)
def list_rejected(
    request: Request,
    source: Source | None = None,
    received_after: datetime | None = None,
    received_before: datetime | None = None,
    limit: Limit = service.DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> RejectedPage:
    return service.list_rejected(
        bridge(request).engine,
        source=source.value if source else None,
        received_after=received_after,
        received_before=received_before,
        limit=limit,
        cursor=cursor,
    )


@router.get(
    "/stats",
    summary="Queue depth by direction and state, lag, throughput, parked, pauses, workers",
    responses=_errors(),
)
def stats(request: Request) -> Stats:
    state = bridge(request)
    return service.stats(state.engine, state.counts)


@router.post(
    "/upstreams/{upstream}/resume",
    summary="Clear the pause of an upstream whose credentials were fixed",
    responses=_errors(422),
)
def resume_upstream(request: Request, upstream: Upstream) -> ResumeResult:
    return actions.resume_upstream(bridge(request).engine, upstream)


# -- what the console reads ----------------------------------------------------------------------


@router.get(
    "/overview",
    summary="Per direction and upstream: counts by state, lag, pauses; per minute for an hour",
    responses=_errors(),
)
def overview(request: Request) -> Overview:
    state = bridge(request)
    return insights.overview(state.engine, state.counts)


@router.get(
    "/failures",
    summary="Failed and dead deliveries grouped by upstream, status code and reason",
    description="Each group carries the `POST /admin/replay` body that replays exactly its "
    "items. Groups that failed most recently come first; page with `offset`.",
    responses=_errors(422),
)
def failures(
    request: Request,
    upstream: Upstream | None = None,
    state: Annotated[
        list[State] | None, Query(description="Repeatable; default failed and dead")
    ] = None,
    updated_after: Annotated[datetime | None, Query(description="Got there at or after")] = None,
    updated_before: datetime | None = None,
    limit: Limit = service.DEFAULT_LIMIT,
    offset: Annotated[
        int, Query(ge=0, le=service.MAX_ID, description="`next_offset` of the previous page")
    ] = 0,
) -> FailureGroups:
    spec = Filters(
        upstream=upstream,
        states=state,
        updated_after=updated_after,
        updated_before=updated_before,
    )
    return insights.failures(bridge(request).engine, spec, limit=limit, offset=offset)


@router.get(
    "/person",
    summary="Everything held about one email: identity, deliveries, rejected calls naming it",
    responses=_errors(422),
)
def person(
    request: Request,
    email: Annotated[str, Query(min_length=1, description="The person's email (any case)")],
) -> Person:
    return insights.person(bridge(request).engine, email)


@router.get(
    "/consent/{email}",
    summary="One person's email consent: what is known and told, the consent log, status reads",
    responses=_errors(422),
)
def consent_of(request: Request, email: str) -> PersonConsent:
    return consent_view(bridge(request).engine, service.email_filter(email))
