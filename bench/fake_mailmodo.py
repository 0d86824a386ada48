"""A zero-latency stand-in for Mailmodo's API, for the delivery benchmarks.

A plain ASGI app (no framework, so it costs the machine as little CPU as possible): every
``POST`` is answered ``{"success": true, "ref": "<n>"}`` at once and counted;
``GET /_stats`` answers ``{"calls": N, "first": t0, "last": t1}`` (Unix times) and
``POST /_reset`` forgets them. ``BENCH_FAKE_LATENCY_MS`` adds a fixed delay per call.

    python -m uvicorn bench.fake_mailmodo:app --port 18183 --no-access-log
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

LATENCY = float(os.environ.get("BENCH_FAKE_LATENCY_MS", "0")) / 1000.0
_HEADERS = [(b"content-type", b"application/json")]
calls = 0
first: float | None = None
last: float | None = None


async def _answer(send: Send, body: bytes, status: int = 200) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": body})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    global calls, first, last
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:  # drain the request body
        message = await receive()
        more = message.get("more_body", False)
    path = scope["path"]
    if path == "/_stats":
        await _answer(send, orjson.dumps({"calls": calls, "first": first, "last": last}))
        return
    if path == "/_reset":
        calls, first, last = 0, None, None
        await _answer(send, b"{}")
        return
    if LATENCY:
        await asyncio.sleep(LATENCY)
    now = time.time()
    calls += 1
    if first is None:
        first = now
    last = now
    await _answer(send, b'{"success":true,"ref":"r%d"}' % calls)
