"""The asyncio network backend under httpx (app/netbackend.py), against real sockets: reuse of
keep-alive connections, a server that closes an idle one, timeouts, refused connections,
large bodies, TLS, and httpx's own transport when a proxy is configured."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import trustme

from app.netbackend import AsyncioBackend, AsyncioTransport
from app.upstream import UpstreamTimeout, UpstreamUnreachable, pooled_client, send

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


def test_pooled_clients_use_the_asyncio_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    client = pooled_client(base_url="http://x.test", headers={}, timeout=1, max_connections=2)
    transport = client._transport
    assert isinstance(transport, AsyncioTransport)
    assert isinstance(transport._pool._network_backend, AsyncioBackend)


def test_a_configured_proxy_keeps_httpx_own_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3128")
    client = pooled_client(base_url="https://x.test", headers={}, timeout=1, max_connections=2)
    assert not isinstance(client._transport, AsyncioTransport)
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
        transport = AsyncioTransport(limits=httpx.Limits(max_connections=2), verify=context)
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
