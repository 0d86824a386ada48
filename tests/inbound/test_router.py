"""The webhook dispatcher in front of FastAPI: it serves exactly the webhook routes, with the
same answers, request ids and error handling, and hands everything else to FastAPI."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import APIRouter, FastAPI, Request
from sqlalchemy import select
from sqlalchemy.engine import Engine
from starlette.responses import Response

from app.inbound.router import WebhookDispatch, WebhookRoute
from app.main import create_app
from app.outbox.models import Delivery
from app.outbox.writer_process import ProcessWriter
from tests.conftest import CT_SECRET, make_settings, profiles_body

AUTH = {"Authorization": "Basic " + base64.b64encode(f"ct:{CT_SECRET}".encode()).decode()}


async def test_webhook_routes_are_served_by_the_dispatcher(
    client: httpx.AsyncClient, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    served: list[str] = []
    real = WebhookDispatch.serve

    async def spy(*args: object) -> None:
        served.append(args[2]["path"])  # type: ignore[index]
        await real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(WebhookDispatch, "serve", staticmethod(spy))
    r = await client.post(
        "/clevertap/campaigns/c1",
        json=profiles_body("a@x.io"),
        headers={**AUTH, "X-Request-ID": "req-1"},
    )
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "req-1"
    assert r.json()["accepted"] == 1
    assert served == ["/clevertap/campaigns/c1"]
    # everything else is FastAPI's: other routes, other methods, near-miss paths
    assert (await client.get("/healthz")).status_code == 200
    wrong_method = await client.get("/clevertap/campaigns/c1")
    assert wrong_method.status_code == 405
    assert "x-request-id" in wrong_method.headers
    assert (await client.post("/clevertap/campaigns/c1/extra", headers=AUTH)).status_code == 404
    assert served == ["/clevertap/campaigns/c1"]


async def test_an_unexpected_error_is_a_json_500_with_the_request_id() -> None:
    router = APIRouter(route_class=WebhookRoute)

    @router.post("/boom/{thing}")
    async def boom(thing: str, request: Request) -> Response:
        raise RuntimeError(thing)

    dispatch = WebhookDispatch([router])
    app = FastAPI()
    hit = dispatch.match({"type": "http", "method": "POST", "path": "/boom/x", "root_path": ""})
    assert hit is not None
    assert hit[1] == {"thing": "x"}
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/boom/x", "headers": [], "app": app}
    await dispatch.serve(*hit, scope, receive, send)  # type: ignore[arg-type]
    assert sent[0]["status"] == 500
    assert sent[1]["body"] == b'{"error":"internal error","detail":"RuntimeError"}'


def test_root_path_is_stripped_before_matching() -> None:
    from app.inbound.routes import clevertap_router as router

    dispatch = WebhookDispatch([router])
    scope = {"method": "POST", "path": "/bridge/clevertap/campaigns/c9", "root_path": "/bridge"}
    hit = dispatch.match(scope)
    assert hit is not None
    assert hit[1] == {"campaign_id": "c9"}
    assert dispatch.match({**scope, "method": "PUT"}) is None


@pytest.fixture
async def process_client(sqlite_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    app = create_app(make_settings(sqlite_url, ingest_writer="process"))
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bridge.test") as c:
            yield c, app


async def test_the_app_stores_calls_through_the_writer_process(
    process_client: tuple[httpx.AsyncClient, FastAPI], engine: Engine
) -> None:
    client, app = process_client
    writer = app.state.bridge.writer
    assert isinstance(writer, ProcessWriter)
    r = await client.post("/clevertap/campaigns/c1", json=profiles_body("p@x.io"), headers=AUTH)
    assert r.status_code == 200
    (delivery_id,) = r.json()["ids"]
    with engine.connect() as conn:
        assert conn.execute(select(Delivery.email).where(Delivery.id == delivery_id)).scalar() == (
            "p@x.io"
        )
    ready = (await client.get("/readyz")).json()
    assert ready["checks"]["writer"] == {"ok": True, "mode": "process"}
