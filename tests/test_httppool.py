"""The upstream clients' HTTP/1.1 pool under httpx (app/httppool.py), against real sockets:
reuse of keep-alive connections, a server that closes an idle one, timeouts, refused
connections, large bodies, TLS, the pool's limit, answers framed every way HTTP/1.1 allows,
servers that misbehave, and httpx's own transport when a proxy is configured."""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import trustme

from app.httppool import MAX_BODY, FastPool, FastTransport
from app.upstream import (
    DirectPoster,
    UpstreamTimeout,
    UpstreamUnreachable,
    pooled_client,
    send,
)
from app.upstream import (
    UpstreamResponse as UpstreamAnswer,
)

#: A throw-away certificate authority and a certificate for 127.0.0.1, made in memory.
CA = trustme.CA()
CERT = CA.issue_cert("127.0.0.1", "localhost")


class Server:
    """Echoes the body length and the client's port; ``delay`` slows answers; with
    ``close_after`` the server closes each connection after answering."""

    def __init__(self, tls: bool = False) -> None:
        self.delay = 0.0
        self.close_after = False
        self.ports: list[int] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                size = len(self.rfile.read(int(self.headers["Content-Length"])))
                time.sleep(outer.delay)
                outer.ports.append(self.client_address[1])
                raw = f'{{"size": {size}}}'.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                if outer.close_after:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(raw)
                if outer.close_after:
                    self.close_connection = True

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            CERT.configure_cert(context)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def client_for(url: str, timeout: float = 5.0) -> httpx.AsyncClient:
    return pooled_client(base_url=url, headers={}, timeout=timeout, max_connections=4)


def test_pooled_clients_use_the_fast_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    client = pooled_client(base_url="http://x.test", headers={}, timeout=1, max_connections=2)
    transport = client._transport
    assert isinstance(transport, FastTransport)
    assert isinstance(transport._pool, FastPool)


def test_a_configured_proxy_keeps_httpx_own_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3128")
    client = pooled_client(base_url="https://x.test", headers={}, timeout=1, max_connections=2)
    assert not isinstance(client._transport, FastTransport)
    assert client._mounts  # httpx routes through the proxy from the environment


async def test_keep_alive_connections_are_reused(server: Server) -> None:
    async with client_for(server.url) as client:
        for _ in range(5):
            answer = await send(client, client.build_request("POST", "/", content=b"x" * 10))
            assert (answer.status_code, answer.json) == (200, {"size": 10})
    assert len(set(server.ports)) == 1


async def test_a_connection_the_server_closed_is_not_reused(server: Server) -> None:
    server.close_after = True
    async with client_for(server.url) as client:
        for _ in range(3):
            answer = await send(client, client.build_request("POST", "/", content=b"{}"))
            assert answer.status_code == 200
    assert len(set(server.ports)) == 3


async def test_large_bodies_go_out_whole(server: Server) -> None:
    body = b"y" * 3_000_000  # past the cork and the socket buffer: flow control
    async with client_for(server.url) as client:
        answer = await send(client, client.build_request("POST", "/", content=body))
    assert answer.json == {"size": len(body)}


async def test_a_slow_answer_is_a_timeout(server: Server) -> None:
    server.delay = 1.0
    async with client_for(server.url, timeout=0.2) as client:
        with pytest.raises(UpstreamTimeout):
            await send(client, client.build_request("POST", "/", content=b"{}"))


async def test_a_refused_connection_is_unreachable() -> None:
    s = Server()
    url = s.url
    s.close()
    async with client_for(url) as client:
        with pytest.raises(UpstreamUnreachable):
            await send(client, client.build_request("POST", "/", content=b"{}"))


async def test_tls_is_verified_and_works() -> None:
    s = Server(tls=True)
    try:
        context = ssl.create_default_context()
        CA.configure_trust(context)
        transport = FastTransport(limits=httpx.Limits(max_connections=2), verify=context)
        async with httpx.AsyncClient(base_url=s.url, transport=transport) as client:
            for _ in range(2):
                answer = await send(client, client.build_request("POST", "/", content=b"abc"))
                assert answer.json == {"size": 3}
        # An untrusted certificate is refused, not ignored.
        async with client_for(s.url) as strict:
            with pytest.raises(UpstreamUnreachable):
                await send(strict, strict.build_request("POST", "/", content=b"{}"))
    finally:
        s.close()
    assert len(set(s.ports)) == 1


class RawServer:
    """Answers each request on a connection with the next scripted reply (raw bytes, sent as
    they are), or closes the connection on ``None`` (and after an HTTP/1.0 reply); records
    what it received."""

    def __init__(self, replies: list[bytes | None], delay: float = 0.0) -> None:
        self.replies = list(replies)
        self.delay = delay
        self.received: list[bytes] = []
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            while self.replies:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, rest = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                    if name.strip().lower() == b"transfer-encoding":
                        # A chunked body (no trailers here) ends with its empty last chunk.
                        end = b"\r\n0\r\n\r\n"
                        while end not in b"\r\n" + rest:
                            chunk = conn.recv(65536)
                            if not chunk:
                                return
                            rest += chunk
                        length = (b"\r\n" + rest).index(end) + len(end) - 2
                while len(rest) < length:
                    rest += conn.recv(65536)
                self.received.append(head + b"\r\n\r\n" + rest[:length])
                buf = rest[length:]
                time.sleep(self.delay)
                reply = self.replies.pop(0)
                if reply is None:
                    return
                conn.sendall(reply)
                if reply.startswith(b"HTTP/1.0"):
                    return  # an HTTP/1.0 server closes after each answer

    def close(self) -> None:
        self.sock.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def post(url: str, content: bytes = b"{}") -> UpstreamAnswer:
    async with client_for(url, 5.0) as client:
        return await send(client, client.build_request("POST", "/p", content=content))


@pytest.mark.parametrize(
    ("reply", "body"),
    [
        (b'HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n{"a":1}', {"a": 1}),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'3\r\n{"a\r\n4\r\n":2}\r\n0\r\n\r\n',
            {"a": 2},
        ),
        # An interim 100 Continue, then the answer.
        (
            b'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n{"a":3}',
            {"a": 3},
        ),
        # No length at all: the body runs until the server closes the connection.
        (b'HTTP/1.0 200 OK\r\n\r\n{"a":4}', {"a": 4}),
    ],
)
async def test_answers_framed_every_way_are_read_whole(reply: bytes, body: Any) -> None:
    raw = RawServer([reply, None])
    try:
        answer = await post(raw.url)
    finally:
        raw.close()
    assert (answer.status_code, answer.json) == (200, body)


async def test_the_request_goes_out_as_httpx_built_it() -> None:
    raw = RawServer([OK])
    try:
        async with pooled_client(
            base_url=raw.url, headers={"mmApiKey": "k1"}, timeout=5, max_connections=2
        ) as client:
            await send(client, client.build_request("POST", "/a/b?c=d", content=b'{"x":1}'))
    finally:
        raw.close()
    (request,) = raw.received
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /a/b?c=d HTTP/1.1"
    assert {b"mmApiKey: k1", b"Content-Length: 7", b"Host: " + raw.url[7:].encode()} <= set(lines)
    assert body == b'{"x":1}'


async def test_a_streamed_body_goes_out_in_chunks() -> None:
    """Content of unknown length (an async iterator) is framed as chunks, empty pieces
    skipped, and ended with the last chunk; the bridge's own bodies always have a length."""

    async def pieces() -> Any:
        for piece in (b'{"a":', b"", b'"bc"}'):
            yield piece

    raw = RawServer([OK])
    try:
        async with client_for(raw.url) as client:
            answer = await send(client, client.build_request("POST", "/s", content=pieces()))
    finally:
        raw.close()
    assert answer.status_code == 200
    (request,) = raw.received
    head, _, body = request.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head.split(b"\r\n")
    assert b"Content-Length" not in head
    assert body == b'5\r\n{"a":\r\n5\r\n"bc"}\r\n0\r\n\r\n'


async def test_status_headers_and_retry_after_come_through() -> None:
    reply = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n"
    raw = RawServer([reply])
    try:
        answer = await post(raw.url)
    finally:
        raw.close()
    assert (answer.status_code, answer.retry_after, answer.text) == (429, 7.0, "")


@pytest.mark.parametrize(
    "reply",
    [
        None,  # closed without a word
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # closed mid-body
        b"NOT HTTP AT ALL\r\n\r\n",  # garbage
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
    ],
)
async def test_a_broken_answer_is_an_upstream_error_not_a_crash(reply: bytes | None) -> None:
    raw = RawServer([reply])  # then the server closes the connection
    try:
        with pytest.raises(UpstreamUnreachable):
            await post(raw.url)
    finally:
        raw.close()


@pytest.mark.parametrize(
    "first",
    [
        # An answer that says close.
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        # Bytes after the answer: whatever the server means by them, not reusable.
        OK + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ],
)
async def test_a_connection_is_not_reused_after_an_answer_that_ends_it(first: bytes) -> None:
    raw = RawServer([first, OK, OK])
    try:
        async with client_for(raw.url) as client:
            for _ in range(2):
                answer = await send(client, client.build_request("POST", "/", content=b"{}"))
                assert answer.status_code == 200
    finally:
        raw.close()
    assert raw.connections == 2


async def test_an_answer_beyond_the_size_cap_is_refused() -> None:
    big = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1)
    raw = RawServer([big + b"x" * (MAX_BODY + 1)])
    try:
        with pytest.raises(UpstreamUnreachable, match="larger than"):
            await post(raw.url)
    finally:
        raw.close()


async def test_a_header_that_would_split_the_request_is_refused() -> None:
    raw = RawServer([OK])
    try:
        async with pooled_client(
            base_url=raw.url, headers={"X-Key": "a\r\nX-Evil: 1"}, timeout=5, max_connections=2
        ) as client:
            with pytest.raises(UpstreamUnreachable, match="illegal header"):
                await send(client, client.build_request("POST", "/", content=b"{}"))
    finally:
        raw.close()
    assert raw.received == []


async def test_the_pool_caps_connections_and_queued_requests_time_out(server: Server) -> None:
    server.delay = 0.3
    limits = httpx.Limits(max_connections=2)
    transport = FastTransport(limits=limits)
    timeout = httpx.Timeout(5.0, pool=0.1)
    async with httpx.AsyncClient(base_url=server.url, transport=transport, timeout=timeout) as c:
        results = await asyncio.gather(
            *(c.post("/", content=b"{}") for _ in range(4)), return_exceptions=True
        )
        assert sum(isinstance(r, httpx.Response) for r in results) == 2
        assert sum(isinstance(r, httpx.PoolTimeout) for r in results) == 2
        assert transport._pool.connections == 2
        # Without a pool timeout every request waits its turn, two at a time.
        c.timeout = httpx.Timeout(5.0)
        answers = await asyncio.gather(*(c.post("/", content=b"{}") for _ in range(6)))
        assert [a.status_code for a in answers] == [200] * 6
    assert len(set(server.ports)) <= 4


async def test_a_cancelled_request_frees_its_slot_and_closes_its_connection(
    server: Server,
) -> None:
    server.delay = 0.5
    transport = FastTransport(limits=httpx.Limits(max_connections=1))
    async with httpx.AsyncClient(base_url=server.url, transport=transport) as client:
        task = asyncio.create_task(client.post("/", content=b"{}"))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert transport._pool.connections == 0
        server.delay = 0.0
        assert (await client.post("/", content=b"{}")).status_code == 200
    await asyncio.sleep(0.6)  # the cancelled call's handler wakes up and records its port
    assert len(set(server.ports)) == 2


async def test_idle_connections_expire(server: Server) -> None:
    transport = FastTransport(limits=httpx.Limits(max_connections=2, keepalive_expiry=0.1))
    async with httpx.AsyncClient(base_url=server.url, transport=transport) as client:
        await client.post("/", content=b"{}")
        await asyncio.sleep(0.3)
        await client.post("/", content=b"{}")
        assert transport._pool.connections == 1
    assert len(set(server.ports)) == 2
    assert transport._pool.connections == 0


async def test_other_methods_go_through_httpcore(server: Server) -> None:
    transport = FastTransport(limits=httpx.Limits(max_connections=2))
    async with httpx.AsyncClient(base_url=server.url, transport=transport) as client:
        answer = await client.head("/")
    assert answer.status_code == 501  # http.server has no do_HEAD: the answer came back whole
    assert transport._pool.connections == 0


async def test_a_delivery_post_goes_straight_to_the_pool() -> None:
    latin = b'{"m":"caf\xe9"}'
    reply = (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=latin-1\r\n"
        b"Retry-After: 3\r\nContent-Length: %d\r\n\r\n%s" % (len(latin), latin)
    )
    raw = RawServer([OK, reply])
    try:
        async with pooled_client(
            base_url=raw.url + "/api", headers={"mmApiKey": "k1"}, timeout=5, max_connections=2
        ) as client:
            poster = DirectPoster(client)
            assert poster.pool is client._transport._pool  # type: ignore[attr-defined]
            first = await poster.post_json("/v1/x", b'{"a":1}')
            second = await poster.post_json("/v1/x", b"{}")
    finally:
        raw.close()
    assert (first.status_code, first.text, first.json) == (200, "ok", None)
    assert (second.status_code, second.retry_after) == (503, 3.0)
    # The text by the declared charset; JSON only from UTF-8 bytes, as with ``send``.
    assert (second.text, second.json) == ('{"m":"café"}', None)
    assert raw.connections == 1  # kept alive between the two
    head, _, body = raw.received[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /api/v1/x HTTP/1.1"
    assert {b"mmApiKey: k1", b"Content-Type: application/json", b"Content-Length: 7"} <= set(lines)
    assert b"Host: " + raw.url[7:].encode() in lines
    assert body == b'{"a":1}'


async def test_a_delivery_post_maps_failures_like_send(server: Server) -> None:
    server.delay = 1.0
    async with client_for(server.url, timeout=0.2) as client:
        with pytest.raises(UpstreamTimeout):
            await DirectPoster(client).post_json("/", b"{}")
    raw = RawServer([b"garbage\r\n\r\n"])
    try:
        async with client_for(raw.url) as client:
            with pytest.raises(UpstreamUnreachable):
                await DirectPoster(client).post_json("/", b"{}")
    finally:
        raw.close()
    async with client_for(raw.url) as client:  # closed now: refused
        with pytest.raises(UpstreamUnreachable):
            await DirectPoster(client).post_json("/", b"{}")


def test_a_proxied_client_posts_through_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3128")
    client = pooled_client(base_url="https://x.test", headers={}, timeout=1, max_connections=2)
    assert DirectPoster(client).pool is None


def test_a_pool_outlives_the_event_loop_it_was_used_on(server: Server) -> None:
    """A client kept across ``asyncio.run`` calls (the CLI) opens new connections."""
    client = client_for(server.url)

    async def one() -> int:
        answer = await send(client, client.build_request("POST", "/", content=b"{}"))
        return answer.status_code

    assert asyncio.run(one()) == 200
    assert asyncio.run(one()) == 200
    assert len(set(server.ports)) == 2


async def test_a_delivery_post_asks_for_an_uncompressed_answer_and_decodes_one_anyway() -> None:
    packed = gzip.compress(b'{"success": false, "message": "bad campaign"}')
    reply = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (
        len(packed),
        packed,
    )
    raw = RawServer([reply])
    try:
        async with client_for(raw.url) as client:
            answer = await DirectPoster(client).post_json("/", b"{}")
    finally:
        raw.close()
    assert b"Accept-Encoding: identity" in raw.received[0]
    assert answer.json == {"success": False, "message": "bad campaign"}


async def test_a_request_that_says_close_does_not_keep_its_connection(server: Server) -> None:
    transport = FastTransport(limits=httpx.Limits(max_connections=2))
    async with httpx.AsyncClient(base_url=server.url, transport=transport) as client:
        for _ in range(2):
            answer = await client.post("/", content=b"{}", headers={"Connection": "close"})
            assert answer.status_code == 200
        assert transport._pool.connections == 0
    assert len(set(server.ports)) == 2


async def test_closing_the_pool_closes_a_connection_in_use_when_its_request_ends(
    server: Server,
) -> None:
    server.delay = 0.3
    transport = FastTransport(limits=httpx.Limits(max_connections=2))
    client = httpx.AsyncClient(base_url=server.url, transport=transport)
    call = asyncio.create_task(client.post("/", content=b"{}"))
    await asyncio.sleep(0.1)
    await transport._pool.aclose()
    assert (await call).status_code == 200
    assert transport._pool.connections == 0


def test_the_host_header_of_an_ipv6_base_url_has_its_brackets() -> None:
    client = pooled_client(
        base_url="http://[::1]:8080/api", headers={}, timeout=1, max_connections=1
    )
    assert (b"Host", b"[::1]:8080") in DirectPoster(client)._headers


async def test_the_trailers_of_a_chunked_answer_are_not_headers() -> None:
    reply = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )
    raw = RawServer([reply])
    try:
        transport = FastTransport(limits=httpx.Limits(max_connections=1))
        async with httpx.AsyncClient(base_url=raw.url, transport=transport) as client:
            answer = await client.post("/", content=b"{}")
    finally:
        raw.close()
    assert answer.json() == {}
    assert "x-trailer" not in answer.headers
