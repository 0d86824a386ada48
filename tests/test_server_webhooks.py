"""``app.server``'s webhook lane: plain webhook calls served straight from the protocol
(``WebhookCycle``), everything else through uvicorn's ASGI path, on protocol objects with a
fake transport. The lane's answers against a real ``serve`` are covered by every test that
posts to a webhook over a socket (``tests/test_server.py``, the end-to-end tests)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
from fastapi import APIRouter, Request
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from uvicorn.server import ServerState

from app.config import Settings
from app.errors import json_response
from app.inbound.router import WebhookDispatch, WebhookRoute
from app.server import Watch, WebhookCycle, protocol_for
from tests.test_server import _Transport

router = APIRouter(route_class=WebhookRoute)
SEEN: list[dict[str, Any]] = []


@router.post("/hooks/{hook_id}")
async def hook(hook_id: str, request: Request) -> Response:
    try:
        body = await request.body()
    except ClientDisconnect:
        SEEN.append({"hook_id": hook_id, "disconnected": True})
        return json_response({"error": "client disconnected"}, 400)
    if body == b"boom":
        raise RuntimeError("secret detail")
    if body == b"slow":
        await asyncio.sleep(0.05)
    SEEN.append(
        {
            "hook_id": hook_id,
            "body": body,
            "request_id": request.scope["state"]["request_id"],
            "app": request.app,
            "query": request.scope["query_string"],
        }
    )
    return json_response({"hook": hook_id, "size": len(body)}, headers={"X-Extra": "1"})


class _AsgiApp:
    """The app behind uvicorn's path: records that it was called, answers 299."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.dispatch = WebhookDispatch([router])

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.calls.append(scope["path"])
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"asgi"})


@pytest.fixture(autouse=True)
def _clear() -> None:
    SEEN.clear()


def _connect(settings: Settings, app: _AsgiApp, *, lane: bool = True) -> tuple[Any, _Transport]:
    config = uvicorn.Config(app=app, http="httptools", loop="asyncio", log_level="error")
    config.load()
    watch = Watch(settings, cap=10)
    if lane:
        watch.webhooks = app.dispatch
        watch.app = app
    state = ServerState()
    state.default_headers = [(b"date", b"Tue, 01 Dec 2026 00:00:00 GMT"), (b"server", b"uvicorn")]
    conn = protocol_for(watch)(config, state, {}, asyncio.get_running_loop())
    transport = _Transport()
    conn.connection_made(transport)
    return conn, transport


def post(path: bytes, body: bytes, *extra: bytes) -> bytes:
    head = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % (path, len(body))
    return head + b"".join(h + b"\r\n" for h in extra) + b"\r\n" + body


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_webhook_call_is_answered_from_the_protocol_in_one_write(
    settings: Settings,
) -> None:
    app = _AsgiApp()
    conn, transport = _connect(settings, app)
    conn.data_received(post(b"/hooks/h1?x=1", b'{"a":1}', b"X-Request-ID: rid-1"))
    assert isinstance(conn.cycle, WebhookCycle)
    await settle()
    assert app.calls == []  # not through the ASGI app
    assert len(transport.written) == 1
    answer = transport.written[0]
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert b"content-type: application/json" in lines
    assert b"content-length: %d" % len(body) in lines
    assert b"x-extra: 1" in lines
    assert b"x-request-id: rid-1" in lines
    assert b"connection: close" not in lines
    assert any(line.startswith(b"date: ") for line in lines)  # uvicorn's default headers
    assert body == b'{"hook":"h1","size":7}'
    assert [
        {"hook_id": "h1", "body": b'{"a":1}', "request_id": "rid-1", "app": app, "query": b"x=1"}
    ] == SEEN
    assert not transport.closed
    assert conn.cycle.response_complete


async def test_keep_alive_pipelining_and_a_body_in_pieces(settings: Settings) -> None:
    """Two calls in one read: the second, pipelined behind the first (slow) one, waits in
    uvicorn's queue and takes its path once the first is answered; then a third whose body
    arrives in three reads. All on one connection, answered in order."""
    app = _AsgiApp()
    conn, transport = _connect(settings, app)
    conn.data_received(post(b"/hooks/a", b"slow") + post(b"/hooks/b", b"second"))
    for _ in range(40):
        if len(b"".join(transport.written).split(b"HTTP/1.1 ")) == 3:
            break
        await asyncio.sleep(0.01)
    answers = b"".join(transport.written).split(b"HTTP/1.1 ")[1:]
    assert answers[0].startswith(b"200 ")
    assert answers[0].endswith(b'{"hook":"a","size":4}')
    assert answers[1].startswith(b"299 ")
    assert b"\r\nasgi\r\n" in answers[1]
    assert app.calls == ["/hooks/b"]
    transport.written.clear()
    whole = post(b"/hooks/c", b"0123456789")
    conn.data_received(whole[:-10])
    conn.data_received(whole[-10:-4])
    await settle()
    assert transport.written == []  # nothing until the body is complete
    conn.data_received(whole[-4:])
    await settle()
    assert isinstance(conn.cycle, WebhookCycle)
    assert transport.written[0].endswith(b'{"hook":"c","size":10}')
    assert [s["hook_id"] for s in SEEN] == ["a", "c"]
    assert not transport.closed


async def test_connection_close_is_answered_and_honoured(settings: Settings) -> None:
    app = _AsgiApp()
    conn, transport = _connect(settings, app)
    conn.data_received(post(b"/hooks/a", b"x", b"Connection: close"))
    await settle()
    assert b"\r\nconnection: close\r\n" in transport.written[0]
    assert transport.closed


@pytest.mark.parametrize(
    "request_bytes",
    [
        # a transfer coding, an interim answer, a protocol switch: uvicorn handles them
        b"POST /hooks/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1\r\nx\r\n0\r\n\r\n",
        post(b"/hooks/a", b"x", b"Expect: 100-continue"),
        post(b"/hooks/a", b"x", b"Connection: Upgrade", b"Upgrade: h2c"),
        # over the body limit (the ASGI path refuses it early and keeps what it read)
        b"POST /hooks/a HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n",
        # no declared size, or two
        b"POST /hooks/a HTTP/1.1\r\nHost: x\r\n\r\n",
        post(b"/hooks/a", b"x", b"Content-Length: 1"),
        # percent-encoded (uvicorn decodes it), not a webhook route, not POST, not HTTP/1.1
        post(b"/hooks/%61", b"x"),
        post(b"/other", b"x"),
        b"GET /hooks/a HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /hooks/a HTTP/1.0\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",
    ],
)
async def test_anything_but_a_plain_webhook_call_takes_uvicorns_path(
    settings: Settings, request_bytes: bytes
) -> None:
    app = _AsgiApp()
    conn, transport = _connect(settings, app)
    conn.data_received(request_bytes)
    await settle()
    assert not isinstance(conn.cycle, WebhookCycle)
    assert SEEN == []
    if not transport.closed:  # (two Content-Length headers are refused by the parser: 400)
        assert len(app.calls) == 1


async def test_without_the_lane_every_call_takes_uvicorns_path(settings: Settings) -> None:
    app = _AsgiApp()
    conn, transport = _connect(settings, app, lane=False)
    conn.data_received(post(b"/hooks/a", b"x"))
    await settle()
    assert app.calls == ["/hooks/a"]
    assert transport.written[0].startswith(b"HTTP/1.1 299 ")


async def test_an_endpoint_that_fails_gets_the_apps_500_without_its_message(
    settings: Settings,
) -> None:
    app = _AsgiApp()
    conn, transport = _connect(settings, app)
    conn.data_received(post(b"/hooks/a", b"boom"))
    await settle()
    answer = transport.written[0]
    assert answer.startswith(b"HTTP/1.1 500 ")
    assert answer.endswith(b'{"error":"internal error","detail":"RuntimeError"}')
    assert b"secret detail" not in answer
    assert not transport.closed  # the connection stays usable
    conn.data_received(post(b"/hooks/b", b"ok"))
    await settle()
    assert transport.written[1].startswith(b"HTTP/1.1 200 ")


async def test_a_client_gone_gets_nothing_written(settings: Settings) -> None:
    """Gone before the endpoint read the body: it reads a disconnect (as on uvicorn's path,
    so nothing is stored and the sender, never answered, retries); gone while the endpoint
    works: its answer is not written."""
    app = _AsgiApp()
    conn, transport = _connect(settings, app)
    conn.data_received(post(b"/hooks/a", b"x"))
    cycle = conn.cycle
    assert isinstance(cycle, WebhookCycle)
    conn.connection_lost(None)
    await asyncio.sleep(0.01)
    assert cycle.disconnected
    assert transport.written == []
    assert SEEN == [{"hook_id": "a", "disconnected": True}]
    SEEN.clear()

    conn, transport = _connect(settings, app)
    conn.data_received(post(b"/hooks/b", b"slow"))
    await asyncio.sleep(0)
    conn.connection_lost(None)
    await asyncio.sleep(0.1)
    assert [s["hook_id"] for s in SEEN] == ["b"]
    assert transport.written == []


async def test_a_client_gone_while_its_body_arrives_still_reaches_the_endpoint(
    settings: Settings,
) -> None:
    """As on uvicorn's path, where the call's task begins with the head: the endpoint reads a
    disconnect (the bridge's counts and logs it as abandoned, or refuses a wrong secret);
    nothing is written. A body timeout closing the connection ends the same way."""
    app = _AsgiApp()
    conn, transport = _connect(settings, app)
    whole = post(b"/hooks/a", b"0123456789")
    conn.data_received(whole[:-5])
    assert conn.uploading
    conn.connection_lost(None)
    assert not conn.uploading
    await settle()
    assert SEEN == [{"hook_id": "a", "disconnected": True}]
    assert transport.written == []


async def test_a_probe_only_connection_never_serves_webhooks(settings: Settings) -> None:
    app = _AsgiApp()
    conn, _transport = _connect(settings, app)
    conn._w_probe = True
    conn.data_received(post(b"/hooks/a", b"x"))
    await settle()
    assert not isinstance(conn.cycle, WebhookCycle)
    assert SEEN == []


@pytest.mark.parametrize(
    ("sent", "echoed"),
    [
        (b"abc\tde\xe9f", b"abcdef"),  # printable ASCII only (the parser refuses controls)
        (b"r" * 100, b"r" * 64),  # at most 64 characters
        (b"\xff\xfe", None),  # nothing left: a new id
    ],
)
async def test_the_request_id_echoed_is_printable_and_bounded(
    settings: Settings, sent: bytes, echoed: bytes | None
) -> None:
    app = _AsgiApp()
    conn, transport = _connect(settings, app)
    conn.data_received(post(b"/hooks/a", b"x", b"X-Request-ID: " + sent))
    await settle()
    line = next(x for x in transport.written[0].split(b"\r\n") if x.startswith(b"x-request-id: "))
    value = line.removeprefix(b"x-request-id: ")
    if echoed is None:
        assert len(value) == 16
        assert value != sent
    else:
        assert value == echoed
