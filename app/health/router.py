"""``/healthz`` for liveness, ``/readyz`` for readiness; both meant for an ops ``curl``."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from app import __version__
from app.errors import json_response
from app.health.service import readiness
from app.metrics import WithChildren
from app.state import bridge

router = APIRouter(tags=["health"])


# HEAD too (not documented apart): some monitors and load balancers probe with it, and a 405
# would read as "down".
@router.head("/healthz", include_in_schema=False)
@router.get("/healthz", summary="Liveness: 200 while the process serves")
async def healthz() -> Response:
    return json_response({"status": "ok", "version": __version__})


@router.head("/readyz", include_in_schema=False)
@router.get(
    "/readyz",
    summary="Readiness: database, migrations, worker heartbeat, upstreams",
    responses={503: {"description": "Not ready; `checks` says which check failed and why"}},
)
async def readyz(request: Request) -> Response:
    ready, checks = await asyncio.to_thread(readiness, bridge(request))
    return json_response(
        {"status": "ready" if ready else "not ready", "checks": checks}, 200 if ready else 503
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    state = bridge(request)

    # serve's worker child counts deliveries in its own memory: its counters are added in.
    own = WithChildren(getattr(state.runner, "metric_families", list))

    def render() -> bytes:
        return generate_latest(own) + generate_latest(state.metrics)

    return Response(await asyncio.to_thread(render), media_type=CONTENT_TYPE_LATEST)
