"""The HTTP server of ``serve`` (and the sandbox and the end-to-end tests): uvicorn, plus what
uvicorn leaves out.

uvicorn times out idle keep-alive connections only after a response, and has neither a
header-read timeout, nor a body-read timeout, nor a connection cap: a connection that sends
nothing, or one byte now and then, stays open forever, and enough of them exhaust the file
limit, after which the server answers nothing (not even ``/healthz``) and logs nothing. Here:

* the soft ``RLIMIT_NOFILE`` is raised to the hard limit at start, and connections are capped
  below it (``BRIDGE_MAX_CONNECTIONS``, leaving room for the database, the writer and the
  upstream clients). At the cap a connection that is not in the middle of a request (idle, or
  still sending its headers) is closed to make room, so ``/healthz`` still gets through a
  flood; when every connection is busy with a request, up to ``PROBE_HEADROOM`` more are let
  in for health probes only (``/healthz``, ``/readyz`` answered, anything else 503), and past
  those a new one is answered 503 and closed. Reaching the cap is logged (once per interval)
  and counted;
* a watchdog closes connections idle past ``BRIDGE_KEEP_ALIVE_SECONDS`` (from the moment they
  open, not only after a response), requests whose headers take longer than
  ``BRIDGE_HEADER_TIMEOUT_SECONDS``, and bodies that stop arriving for
  ``BRIDGE_BODY_TIMEOUT_SECONDS``;
* SIGTERM ends within ``BRIDGE_SHUTDOWN_GRACE_SECONDS`` (plus under a second): the worker is
  told to stop at once (not after the HTTP drain), calls in flight get until the grace runs
  out, and a call still unanswered then gets a 503 (the sender retries; dedup recognises a
  call that was committed meanwhile), never uvicorn's 500.

* a webhook call (POST to a webhook route, its size declared and within the body limit,
  nothing to negotiate) is served straight from the protocol by ``WebhookCycle``: the same
  endpoint, the same answer and request id, without uvicorn's ASGI cycle and Starlette's
  response machinery, which cost about a tenth of the API process's CPU per call
  (bench/RESULTS.md). Every other request takes uvicorn's path unchanged.

The per-call cost is two attribute stores in ``data_received`` and one per request begun and
answered; the watchdog walks the open connections once per interval (a second at most).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
from typing import Any

import httptools
import structlog
import uvicorn
from prometheus_client import Counter, Gauge
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from app.config import Settings
from app.inbound.router import Endpoint, WebhookDispatch, request_id_of
from app.logging import log_throttled

log = structlog.get_logger(__name__)

CONNECTIONS_CLOSED = Counter(
    "ctmm_bridge_connections_closed_total",
    "HTTP connections the bridge closed itself, by reason (idle, header_timeout, "
    "body_timeout, evicted at the cap, refused at the cap, head_too_large, message_too_large).",
    ["reason"],
)
CONNECTIONS_OPEN = Gauge("ctmm_bridge_connections_open", "HTTP connections open now.")
for _reason in (
    "idle",
    "header_timeout",
    "body_timeout",
    "evicted",
    "refused",
    "shutdown",
    "head_too_large",
    "message_too_large",
):
    CONNECTIONS_CLOSED.labels(_reason)

#: File descriptors kept for everything but client connections (database files, the writer's
#: socket, upstream connections, logs), at most half the limit.
FD_RESERVE = 256
#: What a connection refused at the cap, or a call caught by shutdown, is answered.
_BODY_503 = b'{"error":"temporarily unavailable","detail":"the server is %s; retry"}'


def _raw_503(why: bytes) -> bytes:
    body = _BODY_503 % why
    return (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        b"retry-after: 5\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    )


REFUSED_ANSWER = _raw_503(b"at its connection limit")

#: The most a request's head (request line and headers) may take, as nginx and h11 bound it;
#: past it the call is answered 431 and the connection closed. httptools joins a header that
#: arrives over several reads with ``bytes +=``: a 120 MB header held the loop for seconds.
MAX_HEAD_BYTES = 64 * 1024
_HEAD_BODY = (
    b'{"error":"request header fields too large","detail":"the request line and headers '
    b'may take %d bytes at most"}' % MAX_HEAD_BYTES
)
HEAD_TOO_LARGE_ANSWER = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_HEAD_BODY), _HEAD_BODY)
)
#: What the operator reads when every connection is busy with a call (both log lines say it).
ALL_BUSY_HINT = (
    "every connection is busy with a request; raise BRIDGE_MAX_CONNECTIONS or add replicas"
)

#: Connections let in past the cap, while every other one is busy with a call, for a health
#: probe only: ``/healthz`` and ``/readyz`` are answered as usual, anything else 503 at once
#: (a flood of slow authenticated bodies must not make an orchestrator restart the bridge).
#: Within ``FD_RESERVE``.
PROBE_HEADROOM = 16
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
_PROBE_ONLY_BODY = _BODY_503 % b"at its connection limit"
_PROBE_ONLY_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_PROBE_ONLY_BODY)).encode()),
    (b"retry-after", b"5"),
    (b"connection", b"close"),
]


def probe_only(app: ASGIApp) -> ASGIApp:
    """``app`` for a connection let in past the cap: health probes only."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in PROBE_PATHS:
            CONNECTIONS_CLOSED.labels("refused").inc()
            await send(
                {"type": "http.response.start", "status": 503, "headers": _PROBE_ONLY_HEADERS}
            )
            await send({"type": "http.response.body", "body": _PROBE_ONLY_BODY})
            return
        await app(scope, receive, send)

    return guarded


SHUTDOWN_ANSWER = _raw_503(b"shutting down")


def raise_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit where allowed; the soft limit in force."""
    if sys.platform == "win32":  # pragma: no cover
        return 8192
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            log.warning("could not raise the file limit", soft=soft, hard=hard)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def connection_cap(max_connections: int, file_limit: int) -> int:
    """``max_connections``, lowered to fit under the file limit with ``FD_RESERVE`` to spare."""
    return max(1, min(max_connections, file_limit - min(FD_RESERVE, file_limit // 2)))


class Watch:
    """What the protocols of one server share: the limits, the coarse clock, the counters."""

    def __init__(self, settings: Settings, cap: int) -> None:
        self.cap = cap
        self.keep_alive = settings.keep_alive_seconds
        self.header_timeout = settings.header_timeout_seconds
        self.body_timeout = settings.body_timeout_seconds
        #: Bytes of a request after its head (body, chunk framing, trailers) past which its
        #: connection is closed: twice the body limit leaves room for any honest chunking.
        self.max_message = 2 * settings.max_body_bytes + MAX_HEAD_BYTES
        self.interval = min(1.0, max(0.05, min(self.keep_alive, self.header_timeout) / 4))
        #: Refreshed by the watchdog each interval: per-call code stores it, never reads a clock.
        self.now = time.monotonic()
        #: Connections open now that were let in past the cap for a health probe.
        self.probes = 0
        #: The app's webhook routes, served by ``WebhookCycle`` (None: every request via ASGI).
        self.webhooks: WebhookDispatch | None = None
        #: The app the webhook endpoints see as ``request.app``.
        self.app: Any = None
        self.max_body = settings.max_body_bytes


_data_received = HttpToolsProtocol.data_received
_on_message_begin = HttpToolsProtocol.on_message_begin
_on_headers_complete = HttpToolsProtocol.on_headers_complete
_on_response_complete = HttpToolsProtocol.on_response_complete
_on_body = HttpToolsProtocol.on_body
_on_message_complete = HttpToolsProtocol.on_message_complete

#: Request headers that mean something to negotiate (an interim answer, a transfer coding, a
#: protocol switch): such a call takes uvicorn's path, which handles them.
_NEGOTIATED = frozenset((b"expect", b"transfer-encoding", b"upgrade"))


class _OneSendTransport:
    """The connection's transport, sending a response's head together with its body.

    uvicorn writes the status line and headers when the app starts its answer and the body
    when it sends it: two ``send`` calls, and two wake-ups of the client, per answer. Here the
    head is held until the next write (the body, a moment later in the same step of the app
    in practice) and both go out in one; a head with no write after it goes out at the end of
    the loop's turn, and ``close`` sends anything held first. Everything else is the
    transport's own.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write_whole(self, data: bytes) -> None:
        """A whole answer at once: nothing to hold."""
        self.flush()
        self._transport.write(data)

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif data[:5] == b"HTTP/":
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Unused:
    """The cycle's ``message_event``: the body is complete before the endpoint runs, so there
    is never anything to wait for (uvicorn's code sets it on disconnects)."""

    __slots__ = ()

    def set(self) -> None:
        pass


_UNUSED = _Unused()


class WebhookCycle:
    """One webhook call served straight from the protocol.

    Taken by ``WatchedProtocol._take_webhook`` when the head is in; the body is gathered as it
    arrives; once complete, a task runs the route's endpoint (``WebhookDispatch.respond``, as
    the ASGI path does) and the answer goes out in one write, with the request id, followed by
    uvicorn's own end of a response (keep-alive, the next pipelined request). It has the
    attributes of uvicorn's ``RequestResponseCycle`` that the protocol, the watchdog and the
    shutdown read or set, so it is treated like any other call in progress: a shutdown that
    catches it answers 503, a client that leaves marks it disconnected and nothing is written.
    """

    __slots__ = (
        "_read",
        "body",
        "disconnected",
        "endpoint",
        "keep_alive",
        "more_body",
        "params",
        "protocol",
        "response_complete",
        "response_started",
        "scope",
    )

    message_event = _UNUSED

    def __init__(
        self,
        protocol: WatchedProtocol,
        scope: Scope,
        endpoint: Endpoint,
        params: dict[str, str],
        keep_alive: bool,
    ) -> None:
        self.protocol = protocol
        self.scope = scope
        self.endpoint = endpoint
        self.params = params
        self.keep_alive = keep_alive
        self.body = b""
        self.more_body = True
        self.response_started = False
        self.response_complete = False
        self.disconnected = False
        self._read = False

    async def receive(self) -> Message:
        """The ASGI ``receive`` the endpoint's ``Request`` reads: the whole body, once."""
        if self._read or self.disconnected:
            return {"type": "http.disconnect"}
        self._read = True
        return {"type": "http.request", "body": self.body, "more_body": False}

    async def run(self) -> None:
        scope = self.scope
        request_id = request_id_of(scope)
        tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            response = await WebhookDispatch.respond(
                self.endpoint, self.params, scope, self.receive
            )
        finally:
            structlog.contextvars.reset_contextvars(**tokens)
        self.answer(response, request_id)

    def answer(self, response: Response, request_id: str) -> None:
        """Status line, uvicorn's default headers, the response's, the request id; then the
        body, all in one write."""
        protocol = self.protocol
        if self.disconnected or self.response_complete or protocol.transport.is_closing():
            return  # the client left, or the shutdown answered 503 meanwhile
        self.response_started = True
        out: list[bytes | memoryview] = [STATUS_LINE[response.status_code]]
        for name, value in protocol.server_state.default_headers:
            out += (name, b": ", value, b"\r\n")
        for name, value in response.raw_headers:
            out += (name, b": ", value, b"\r\n")
        out += (b"x-request-id: ", request_id.encode("latin-1"), b"\r\n")
        if not self.keep_alive:
            out.append(b"connection: close\r\n")
        out += (b"\r\n", response.body)
        transport = protocol.transport
        transport.write_whole(b"".join(out))  # type: ignore[attr-defined]
        self.response_complete = True
        if not self.keep_alive:
            transport.close()
        protocol.on_response_complete()


class WatchedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the times the watchdog needs and the cap."""

    watch: Watch  # set on the subclass made for each server (see ``protocol_for``)
    _w_rx: float
    _w_begun: float | None
    _w_head: int
    _w_body: int
    _w_done: float
    _w_refused: bool
    _w_probe: bool

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        watch = self.watch
        self._w_rx = self._w_done = watch.now
        self._w_begun = None
        self._w_head = self._w_body = 0
        self._w_refused = self._w_probe = False
        # Probe connections sit beyond the cap: only the others count against it, and only
        # the others make room for a full connection.
        if len(self.connections) - watch.probes >= watch.cap and not self._make_room(probe=False):
            if watch.probes < PROBE_HEADROOM or self._make_room(probe=True):
                log_throttled(
                    log,
                    "warning",
                    "connection limit reached: new connections serve health probes only",
                    cap=watch.cap,
                    hint=ALL_BUSY_HINT,
                )
                watch.probes += 1
                self._w_probe = True
                super().connection_made(_OneSendTransport(transport, self.loop))  # type: ignore[arg-type]
                self.app = probe_only(self.app)
                return
            log_throttled(
                log,
                "warning",
                "connection limit reached: refusing connections",
                cap=watch.cap,
                hint=ALL_BUSY_HINT,
            )
            self._w_refused = True
            CONNECTIONS_CLOSED.labels("refused").inc()
            with contextlib.suppress(Exception):
                transport.write(REFUSED_ANSWER)
            transport.close()
            return
        super().connection_made(_OneSendTransport(transport, self.loop))  # type: ignore[arg-type]

    def _make_room(self, *, probe: bool) -> bool:
        """Close one connection of the kind asked for (a probe connection or a full one) that
        is not in the middle of a request, if there is one."""
        for other in self.connections:
            if (
                isinstance(other, WatchedProtocol)
                and other._w_probe is probe
                and other._evictable()
            ):
                CONNECTIONS_CLOSED.labels("evicted").inc()
                log_throttled(
                    log,
                    "warning",
                    "connection limit reached: closing idle connections",
                    cap=self.watch.cap,
                    hint="raise BRIDGE_MAX_CONNECTIONS if these are real clients",
                )
                other.transport.close()
                other.connections.discard(other)  # its connection_lost comes later
                if probe:  # its slot is taken over now
                    other._w_probe = False
                    self.watch.probes -= 1
                return True
        return False

    def _evictable(self) -> bool:
        cycle = self.cycle
        return (cycle is None or cycle.response_complete) and not self.transport.is_closing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._w_refused:
            return
        if self._w_probe:
            self._w_probe = False
            self.watch.probes -= 1
        cycle: Any = self.cycle
        super().connection_lost(exc)
        if type(cycle) is WebhookCycle and cycle.more_body:
            # Gone (or cut off by a timeout) before its body was complete: the endpoint still
            # runs, reads a disconnect and counts and logs the call as abandoned (or refuses a
            # wrong secret), as on uvicorn's path, where its task had begun with the head.
            cycle.more_body = False
            cycle.disconnected = True
            self._start_webhook(cycle)

    # On every call: an attribute store each, and the base method called directly (cheaper
    # than super() on Python 3.11).
    def data_received(self, data: bytes) -> None:
        self._w_rx = self.watch.now
        _data_received(self, data)
        if self._w_begun is not None:  # a request's head is still arriving
            if self._w_head < 0:
                # The read the request began in is not counted: it may end the one before
                # (a pipelined body), so the cap holds within one read's size.
                self._w_head = 0
            else:
                self._w_head += len(data)
            if self._w_head > MAX_HEAD_BYTES and not self.transport.is_closing():
                self._cut_off(
                    "head_too_large",
                    "request head too large: answered 431 and closed the connection",
                    MAX_HEAD_BYTES,
                    HEAD_TOO_LARGE_ANSWER,
                )
        elif (cycle := self.cycle) is not None and cycle.more_body:
            # The body and its chunked trailers, which httptools joins as slowly as headers.
            self._w_body += len(data)
            if self._w_body > self.watch.max_message and not self.transport.is_closing():
                self._cut_off(
                    "message_too_large",
                    "request body and trailers far over the body limit: connection closed",
                    self.watch.max_message,
                )

    def on_message_begin(self) -> None:
        self._w_begun = self.watch.now
        self._w_head = -1
        self._w_body = 0
        _on_message_begin(self)

    def _cut_off(self, reason: str, event: str, limit: int, answer: bytes = b"") -> None:
        """Close a connection whose request passed ``limit`` bytes (counted and logged by
        ``reason``), after ``answer`` when the request can still be answered."""
        CONNECTIONS_CLOSED.labels(reason).inc()
        log_throttled(log, "warning", event, key=reason, limit_bytes=limit)
        if answer:
            with contextlib.suppress(Exception):
                self.transport.write(answer)
        self.transport.close()

    def on_headers_complete(self) -> None:
        self._w_begun = None
        webhooks = self.watch.webhooks
        if webhooks is None or not self._take_webhook(webhooks):
            _on_headers_complete(self)

    def _take_webhook(self, webhooks: WebhookDispatch) -> bool:
        """Serve this request as a ``WebhookCycle`` if it is a plain webhook call: POST over
        HTTP/1.1 to a webhook route, its size declared and within the body limit, nothing to
        negotiate, no earlier request on the connection still unanswered (pipelining keeps
        uvicorn's queue), the client reading its answers, and a full connection (not one let
        in past the cap for health probes). Anything else is left to uvicorn."""
        parser = self.parser
        if (
            self._w_probe
            or self.limit_concurrency is not None
            or parser.get_method() != b"POST"
            or parser.get_http_version() != "1.1"
            or parser.should_upgrade()
            or self.flow.write_paused
        ):
            return False
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            return False
        length = None
        for name, value in self.headers:
            if name == b"content-length":
                if length is not None:
                    return False
                length = value
            elif name in _NEGOTIATED:
                return False
        if length is None or not (0 < len(length) <= 12 and length.isdigit()):
            return False
        if int(length) > self.watch.max_body:
            return False  # the ASGI path refuses it early, keeping what it reads (413)
        url = httptools.parse_url(self.url)
        raw_path: bytes = url.path
        if b"%" in raw_path:
            return False  # uvicorn decodes it
        scope: Scope = self.scope  # type: ignore[assignment]
        scope["method"] = "POST"
        scope["path"] = self.root_path + raw_path.decode("ascii")
        scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        scope["query_string"] = url.query or b""
        hit = webhooks.match(scope)
        if hit is None:
            return False
        scope["app"] = self.watch.app
        self.cycle = WebhookCycle(  # type: ignore[assignment]
            self, scope, hit[0], hit[1], parser.should_keep_alive()
        )
        return True

    def on_body(self, body: bytes) -> None:
        cycle: Any = self.cycle
        if type(cycle) is WebhookCycle:
            cycle.body = cycle.body + body if cycle.body else body
        else:
            _on_body(self, body)

    def on_message_complete(self) -> None:
        cycle: Any = self.cycle
        if type(cycle) is WebhookCycle:
            cycle.more_body = False
            self._start_webhook(cycle)
        else:
            _on_message_complete(self)

    def _start_webhook(self, cycle: WebhookCycle) -> None:
        task = self.loop.create_task(cycle.run())
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    @property
    def uploading(self) -> bool:
        """A webhook call whose body is still arriving (its task starts when it is complete):
        a call in flight for the shutdown's grace, as one with a task is."""
        cycle: Any = self.cycle
        return type(cycle) is WebhookCycle and cycle.more_body and not cycle.disconnected

    def on_response_complete(self) -> None:
        self._w_done = self.watch.now
        _on_response_complete(self)

    def overdue(self, now: float) -> str | None:
        """Why this connection should be closed now, if it should."""
        watch = self.watch
        begun = self._w_begun
        if begun is not None:
            return "header_timeout" if now - begun > watch.header_timeout else None
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not self.flow.read_paused:
            # A body still to come: while the call waits for it, or after an early answer.
            since = max(self._w_rx, self._w_done if cycle.response_complete else 0.0)
            return "body_timeout" if now - since > watch.body_timeout else None
        if cycle is None or cycle.response_complete:
            since = max(self._w_rx, self._w_done)
            return "idle" if now - since > watch.keep_alive else None
        return None  # the app is working on a request: not ours to judge


def protocol_for(watch: Watch) -> type[WatchedProtocol]:
    """A protocol class bound to one server's ``Watch`` (uvicorn builds it with its config)."""
    return type("BridgeProtocol", (WatchedProtocol,), {"watch": watch})


class BridgeServer(uvicorn.Server):
    """uvicorn's server with the watchdog and a shutdown that keeps to the grace period."""

    def __init__(self, config: uvicorn.Config, watch: Watch, grace_seconds: float) -> None:
        super().__init__(config)
        self.watch = watch
        self.grace = grace_seconds
        self._watchdog: asyncio.Task[None] | None = None
        #: Called as soon as shutdown begins (``app.state.begin_stop``: the worker's stop).
        self.app: Any = config.app

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self._watchdog = asyncio.get_running_loop().create_task(self._watch(), name="watchdog")

    async def _watch(self) -> None:
        watch = self.watch
        while True:
            await asyncio.sleep(watch.interval)
            now = watch.now = time.monotonic()
            connections = self.server_state.connections
            CONNECTIONS_OPEN.set(len(connections))
            for conn in list(connections):
                if not isinstance(conn, WatchedProtocol) or conn.transport.is_closing():
                    continue
                reason = conn.overdue(now)
                if reason is not None:
                    CONNECTIONS_CLOSED.labels(reason).inc()
                    conn.transport.close()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop listening, tell the worker, let calls finish until the grace runs out, answer
        503 to those that have not, then stop the app (writer, worker) in what is left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace
        begin_stop = getattr(getattr(self.app, "state", None), "begin_stop", None)
        if callable(begin_stop):
            begin_stop()
        log.info("shutting down", grace_seconds=self.grace)
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        # Calls in flight get the grace period, less a moment for the app's own stop.
        reserve = min(0.5, self.grace / 4)
        await self._wait_tasks(deadline - reserve)
        answered = self._answer_unfinished()
        if answered:
            log.warning("calls unanswered at shutdown were answered 503", calls=answered)
        # Their tasks see a closed connection; a commit that lands meanwhile is a duplicate
        # the sender's retry is told about.
        await self._wait_tasks(max(deadline, loop.time() + 0.1))
        for task in list(self.server_state.tasks):
            task.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
        for connection in list(self.server_state.connections):
            connection.transport.close()
        if not self.force_exit:
            try:
                async with asyncio.timeout(max(0.2, deadline + 0.6 - loop.time())):
                    await self.lifespan.shutdown()
            except TimeoutError:
                log.error("the app did not stop within the grace period; exiting anyway")

    async def _wait_tasks(self, until: float) -> None:
        """Until every call's task is done and no webhook call's body is still arriving (new
        tasks may start meanwhile), or ``until``."""
        loop = asyncio.get_running_loop()
        while not self.force_exit:
            tasks = self.server_state.tasks
            uploading = any(
                isinstance(c, WatchedProtocol) and c.uploading
                for c in self.server_state.connections
            )
            left = until - loop.time()
            if (not tasks and not uploading) or left <= 0:
                return
            step = min(left, 0.05 if uploading else 0.25)
            if tasks:
                await asyncio.wait(set(tasks), timeout=step)
            else:
                await asyncio.sleep(step)

    def _answer_unfinished(self) -> int:
        answered = 0
        for conn in list(self.server_state.connections):
            cycle = getattr(conn, "cycle", None)
            if cycle is None or cycle.response_started or cycle.response_complete:
                continue
            cycle.disconnected = True  # what the app sends from now on goes nowhere
            cycle.message_event.set()
            with contextlib.suppress(Exception):
                conn.transport.write(SHUTDOWN_ANSWER)
            conn.transport.close()
            CONNECTIONS_CLOSED.labels("shutdown").inc()
            answered += 1
        return answered


def build_server(
    app: Any,
    settings: Settings,
    *,
    log_level: str | None = None,
    handle_signals: bool = True,
) -> BridgeServer:
    """The server for ``app``, configured from ``settings`` (host, port, limits, timeouts)."""
    cap = connection_cap(settings.max_connections, raise_file_limit())
    watch = Watch(settings, cap)
    dispatch = getattr(app, "dispatch", None)
    if isinstance(dispatch, WebhookDispatch):
        watch.webhooks = dispatch
        watch.app = app
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol_for(watch),
        log_config=None,
        log_level=log_level,
        access_log=False,
        timeout_keep_alive=max(1, round(settings.keep_alive_seconds)),
        timeout_graceful_shutdown=round(settings.shutdown_grace_seconds) + 1,
    )
    server: BridgeServer = (BridgeServer if handle_signals else _QuietServer)(
        config, watch, settings.shutdown_grace_seconds
    )
    log.debug("http server", max_connections=cap)
    return server


class _QuietServer(BridgeServer):
    """For several servers in one loop (the sandbox): signals are handled by the caller."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield
