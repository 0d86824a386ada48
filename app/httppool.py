"""An HTTP/1.1 connection pool for httpx: the same client, a fraction of its CPU per request.

httpx sends through httpcore, whose pool, h11 state machine and stream layers cost ~600 µs of
CPU per POST on the benchmark's 2-vCPU Xeon: half of what a delivery costs (bench/RESULTS.md).
A delivery is one small request and one small answer on a kept-alive connection, so here a
connection is an ``asyncio.Protocol`` whose bytes go through httptools (the C parser uvicorn
already uses on the server side), and the pool is a stack of idle connections and a count.

It sits where httpx expects httpcore's pool (``httpx.AsyncHTTPTransport._pool``), so httpx's
request building, TLS settings, timeouts and exception mapping all still apply, and respx
fakes it like httpcore's pool (``HTTPCoreMocker.add_targets``, tests/conftest.py). What it does
not speak (methods other than GET/POST/PUT/PATCH/DELETE, HTTP/2, upgrades) goes to httpcore's
own pool. Differences from httpcore, none of which the bridge relies on: a request body is sent
whole (a stalled upload times out as a read, not a write), and an answer is read whole (at most
16 MiB) before it is returned.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import socket
import ssl
import time
from collections.abc import AsyncIterable, Iterable
from types import TracebackType
from typing import Any, NamedTuple

import httpcore
import httptools
import httpx

#: An answer's body beyond this is refused (the bridge's upstreams answer a few hundred bytes).
MAX_BODY = 16 * 2**20
_FAST_METHODS = frozenset({b"GET", b"POST", b"PUT", b"PATCH", b"DELETE"})
_DEFAULT_PORTS = {b"http": 80, b"https": 443}
# RFC 9110 tokens for names; no CR, LF or NUL in values or the request target.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FORBIDDEN = re.compile(rb"[\r\n\x00]")
#: (scheme, host, port)
Origin = tuple[bytes, bytes, int]


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: the event loop feeds its bytes to the parser, whose callbacks
    collect the answer; the request's coroutine waits on one future per burst of bytes."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.error: BaseException | None = None
        self.idle_since = 0.0
        self.in_flight = False
        self._begin()

    def _begin(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.headers_done = False
        self.done = False
        self.keep_alive = False

    # -- asyncio protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.in_flight or self.done:
            # Bytes nobody asked for (on an idle connection, or after the answer): whatever
            # the server means by them, this connection is not reusable.
            self.closed = True
            return
        try:
            self.parser.feed_data(data)
        except Exception as exc:  # httptools' parse errors, or our own from a callback
            self.error = _protocol_error(exc)
            self.closed = True
        self._wake()

    def eof_received(self) -> bool | None:
        self.closed = True
        self._wake()
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if exc is not None and self.error is None:
            self.error = httpcore.ReadError(str(exc) or type(exc).__name__)
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.done:
            raise httpcore.RemoteProtocolError("a second answer to one request")

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.headers_done:  # a chunked answer's trailers are dropped, as httpcore does
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = True
        if self.status == 101:
            raise httpcore.RemoteProtocolError("the server switched protocols")

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > MAX_BODY:
            raise httpcore.RemoteProtocolError(f"answer larger than {MAX_BODY} bytes")
        self.body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:
            # An informational answer (100 Continue, 103 Early Hints): the real one follows.
            self._begin()
            return
        self.done = True
        self.keep_alive = self.parser.should_keep_alive()

    # -- used by the pool -------------------------------------------------------------------

    async def exchange(self, data: bytes, read_timeout: float | None) -> httpcore.Response:
        """Send one request (head and body in one write) and wait for its whole answer."""
        transport = self.transport
        if transport is None or self.closed or transport.is_closing():
            raise httpcore.WriteError("the connection is closed")
        self._begin()
        self.in_flight = True
        transport.write(data)
        while not self.done:
            if self.error is not None:
                raise self.error
            if self.closed:
                self._end_of_stream()
                break
            waiter = self.waiter = self.loop.create_future()
            timer = (
                None
                if read_timeout is None
                else self.loop.call_later(read_timeout, _expire, waiter)
            )
            try:
                await waiter
            finally:
                self.waiter = None
                if timer is not None:
                    timer.cancel()
        self.in_flight = False
        body = b"".join(self.body) if len(self.body) != 1 else self.body[0]
        version = self.parser.get_http_version().encode("ascii")
        return httpcore.Response(
            self.status,
            headers=self.headers,
            content=body,
            extensions={"http_version": b"HTTP/" + version, "reason_phrase": self.reason.strip()},
        )

    def _end_of_stream(self) -> None:
        """The server closed the connection before the answer was complete: fine for an answer
        whose length is "until the connection closes", a protocol error otherwise."""
        if not self.headers_done:
            raise httpcore.RemoteProtocolError("Server disconnected without sending a response.")
        framed = any(
            name.lower() in (b"content-length", b"transfer-encoding") for name, _ in self.headers
        )
        if framed:
            raise httpcore.RemoteProtocolError(
                "peer closed connection without sending complete message body"
            )
        self.done = True
        self.keep_alive = False

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            with contextlib.suppress(RuntimeError):  # its event loop is closed
                self.transport.close()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(httpcore.ReadTimeout("timed out reading the answer"))


def _protocol_error(exc: Exception) -> Exception:
    if isinstance(exc, httpcore.RemoteProtocolError):
        return exc
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, httpcore.RemoteProtocolError):
        return cause
    return httpcore.RemoteProtocolError(f"malformed answer: {exc}")


class FastPool:
    """httpcore's ``AsyncConnectionPool`` interface, for HTTP/1.1 over kept-alive connections.

    At most ``max_connections`` connections (open or opening); a request that finds none free
    waits for one (``pool`` timeout). Idle connections are reused last-in first-out, and closed
    when the server closed them, spoke on them unasked, or after ``keepalive_expiry`` seconds.
    A request that fails or is cancelled part-way closes its connection: its state is unknown.
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None,
        max_connections: int | None,
        max_keepalive_connections: int | None,
        keepalive_expiry: float | None,
    ) -> None:
        self._ssl_context = ssl_context
        self._max = max_connections if max_connections is not None else 2**31
        self._max_idle = (
            max_keepalive_connections if max_keepalive_connections is not None else self._max
        )
        self._expiry = keepalive_expiry if keepalive_expiry is not None else float("inf")
        self._idle: dict[Origin, list[_Connection]] = {}
        self._total = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._fallback: httpcore.AsyncConnectionPool | None = None
        self._closed = False

    @property
    def connections(self) -> int:
        """Connections open or opening (for the tests and the curious)."""
        return self._total

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        if request.method not in _FAST_METHODS:
            return await self._other().handle_async_request(request)
        url = request.url
        scheme = url.scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpcore.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
        origin = (scheme, url.host, url.port or _DEFAULT_PORTS[scheme])
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        head = _head(request.method, url.target, request.headers, origin)
        data = head.data + await _body(request, head.chunked)
        conn = await self._acquire(origin, timeouts.get("pool"))
        reusable = False
        try:
            if conn is None:
                sni = request.extensions.get("sni_hostname")
                conn = await self._connect(origin, timeouts.get("connect"), sni)
            response = await conn.exchange(data, timeouts.get("read"))
            reusable = head.keep and conn.keep_alive and not conn.closed
            return response
        finally:
            self._release(origin, conn, reusable)

    # -- the pool ---------------------------------------------------------------------------

    async def _acquire(self, origin: Origin, patience: float | None) -> _Connection | None:
        """An idle connection to ``origin``, or None with a slot reserved for a new one."""
        loop = asyncio.get_running_loop()
        while True:
            conn = self._take_idle(origin)
            if conn is not None:
                return conn
            if self._total < self._max:
                self._total += 1
                return None
            if self._close_idle_elsewhere(origin):
                continue
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            timer = None if patience is None else loop.call_later(patience, _pool_expire, waiter)
            try:
                await waiter
            except BaseException:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._wake_one()  # we were handed a slot we will not use: pass it on
                raise
            finally:
                if timer is not None:
                    timer.cancel()

    def _take_idle(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        while idle:
            conn = idle.pop()
            # A connection of another event loop (a closed one: a CLI command's) is unusable.
            if conn.closed or now - conn.idle_since > self._expiry or conn.loop is not loop:
                conn.close()
                self._total -= 1
                continue
            return conn
        return None

    def _close_idle_elsewhere(self, origin: Origin) -> bool:
        for other, idle in self._idle.items():
            if other != origin and idle:
                idle.pop(0).close()
                self._total -= 1
                return True
        return False

    def _release(self, origin: Origin, conn: _Connection | None, reusable: bool) -> None:
        if conn is not None and reusable and not self._closed:
            idle = self._idle.setdefault(origin, [])
            now = time.monotonic()
            while idle and (idle[0].closed or now - idle[0].idle_since > self._expiry):
                idle.pop(0).close()
                self._total -= 1
            if len(idle) < self._max_idle:
                conn.idle_since = now
                idle.append(conn)
                self._wake_one()
                return
        if conn is not None:
            conn.close()
        self._total -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _connect(self, origin: Origin, patience: float | None, sni: Any) -> _Connection:
        scheme, host_bytes, port = origin
        host = host_bytes.decode("ascii")
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if scheme == b"https":
            tls = self._ssl_context or ssl.create_default_context()
        try:
            async with asyncio.timeout(patience):
                transport, conn = await loop.create_connection(
                    lambda: _Connection(loop),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=(sni or host) if tls is not None else None,
                )
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"timed out connecting to {host}:{port}") from None
        except OSError as exc:  # refused, unreachable, DNS, and TLS (SSLError is an OSError)
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _other(self) -> httpcore.AsyncConnectionPool:
        if self._fallback is None:
            self._fallback = httpcore.AsyncConnectionPool(
                ssl_context=self._ssl_context,
                max_connections=self._max,
                keepalive_expiry=self._expiry,
            )
        return self._fallback

    async def aclose(self) -> None:
        """Close the idle connections; those in use close when their request ends."""
        self._closed = True
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
                self._total -= 1
        if self._fallback is not None:
            await self._fallback.aclose()

    async def __aenter__(self) -> FastPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()


def _pool_expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(httpcore.PoolTimeout("no connection became free in time"))


class _Head(NamedTuple):
    data: bytes
    #: The connection may be kept (the request itself does not say ``close``).
    keep: bool
    #: The body goes in chunks (``Transfer-Encoding: chunked``).
    chunked: bool


def _head(
    method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]], origin: Origin
) -> _Head:
    """The request line and headers, refusing what would split or smuggle a request."""
    if _FORBIDDEN.search(target) or b" " in target:
        raise httpcore.LocalProtocolError("illegal request target")
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    has_host = chunked = False
    keep = True
    for name, value in headers:
        if not _TOKEN.fullmatch(name) or _FORBIDDEN.search(value):
            raise httpcore.LocalProtocolError(f"illegal header {name[:40]!r}")
        lower = name.lower()
        has_host = has_host or lower == b"host"
        if lower == b"connection" and b"close" in value.lower():
            keep = False
        elif lower == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        parts += (name, b": ", value, b"\r\n")
    if not has_host:
        scheme, host, port = origin
        if b":" in host:  # an IPv6 address
            host = b"[" + host + b"]"
        default = _DEFAULT_PORTS[scheme] == port
        parts.append(b"Host: " + host + (b"" if default else b":%d" % port) + b"\r\n")
    parts.append(b"\r\n")
    return _Head(b"".join(parts), keep, chunked)


async def _body(request: httpcore.Request, chunked: bool) -> bytes:
    """The whole body, framed in chunks when the headers say so."""
    stream = request.stream
    chunks = [chunk async for chunk in stream] if isinstance(stream, AsyncIterable) else []
    if not chunked:
        return b"".join(chunks)
    framed = [b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c]
    return b"".join(framed) + b"0\r\n\r\n"


class FastTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (request mapping, errors, TLS settings) on a ``FastPool``. httpx
    has no parameter for the pool, so the one it built is replaced (the tests check it)."""

    def __init__(self, *, limits: httpx.Limits, verify: bool | ssl.SSLContext = True) -> None:
        super().__init__(limits=limits, verify=verify)
        built = self._pool
        self._pool = FastPool(  # type: ignore[assignment]
            ssl_context=built._ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
        )
