"""A zero-latency stand-in for Mailmodo's API, for the delivery benchmarks.

A plain ASGI app (no framework, so it costs the machine as little CPU as possible): every
``POST`` is answered ``{"success": true, "ref": "<n>"}`` at once and counted;
``GET /_stats`` answers ``{"calls": N, "first": t0, "last": t1}`` (Unix times) and
``POST /_reset`` forgets them. ``BENCH_FAKE_LATENCY_MS`` adds a fixed delay per call.

A misbehaving Mailmodo, for ``bench/forwarder.py``: ``BENCH_FAKE_5XX_RATE`` (0..1) of the calls
are answered 503 and ``BENCH_FAKE_429_RATE`` 429 with ``Retry-After: BENCH_FAKE_RETRY_AFTER``
(1 s); ``BENCH_FAKE_RECORD=1`` keeps the email of every call answered 2xx, and ``GET /_seen``
lists them. ``/_stats`` adds ``ok`` (2xx answers). All off by default: a 200 at once.

    python -m uvicorn bench.fake_mailmodo:app --port 18183 --no-access-log
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

LATENCY = float(os.environ.get("BENCH_FAKE_LATENCY_MS", "0")) / 1000.0
RATE_5XX = float(os.environ.get("BENCH_FAKE_5XX_RATE", "0"))
RATE_429 = float(os.environ.get("BENCH_FAKE_429_RATE", "0"))
RETRY_AFTER = os.environ.get("BENCH_FAKE_RETRY_AFTER", "1").encode()
RECORD = os.environ.get("BENCH_FAKE_RECORD") == "1"
_HEADERS = [(b"content-type", b"application/json")]
_429_HEADERS = [*_HEADERS, (b"retry-after", RETRY_AFTER)]
calls = ok = 0
seen: list[str] = []
first: float | None = None
last: float | None = None


async def _answer(
    send: Send, body: bytes, status: int = 200, headers: list[tuple[bytes, bytes]] = _HEADERS
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    global calls, ok, first, last
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
    more, chunks = True, []
    while more:  # drain the request body
        message = await receive()
        more = message.get("more_body", False)
        if RECORD:
            chunks.append(message.get("body", b""))
    path = scope["path"]
    if path == "/_stats":
        stats = {"calls": calls, "ok": ok, "first": first, "last": last}
        await _answer(send, orjson.dumps(stats))
        return
    if path == "/_seen":
        await _answer(send, orjson.dumps(seen))
        return
    if path == "/_reset":
        calls, ok, first, last = 0, 0, None, None
        seen.clear()
        await _answer(send, b"{}")
        return
    if LATENCY:
        await asyncio.sleep(LATENCY)
    now = time.time()
    calls += 1
    if first is None:
        first = now
    last = now
    if RATE_5XX or RATE_429:
        draw = random.random()
        if draw < RATE_5XX:
            await _answer(send, b'{"success":false,"message":"unavailable"}', 503)
            return
        if draw < RATE_5XX + RATE_429:
            await _answer(send, b'{"success":false,"message":"slow down"}', 429, _429_HEADERS)
            return
    ok += 1
    if RECORD:
        email = orjson.loads(b"".join(chunks) or b"{}").get("email")
        seen.append(str(email))
    await _answer(send, b'{"success":true,"ref":"r%d"}' % calls)
