"""``app.server`` with real sockets against a real ``ctmm-bridge serve`` process: floods of idle
and slowloris connections, the connection cap, and SIGTERM under load.

The limits are set low (a few seconds, a few dozen connections) so the tests stay short; the
mechanisms are the same at the defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from uvicorn.server import ServerState

from app.config import Settings
from app.server import (
    CONNECTIONS_CLOSED,
    FD_RESERVE,
    HEAD_TOO_LARGE_ANSWER,
    MAX_HEAD_BYTES,
    PROBE_HEADROOM,
    REFUSED_ANSWER,
    Watch,
    connection_cap,
    protocol_for,
)
from tests.conftest import CT_SECRET

GRACE = 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Serve:
    """``ctmm-bridge serve`` in a process of its own, on a free port, with a fresh database."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.db = tmp_path / "bridge.db"
        self.log = tmp_path / "serve.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = os.environ | {
            "BRIDGE_DATABASE_URL": f"sqlite:///{self.db}",
            "BRIDGE_PORT": str(self.port),
            "BRIDGE_CLEVERTAP_WEBHOOK_SECRETS": CT_SECRET,
            "BRIDGE_ADMIN_TOKEN": "admin-token-for-tests",
            "BRIDGE_LOG_FORMAT": "json",
            "BRIDGE_SHUTDOWN_GRACE_SECONDS": str(GRACE),
            "BRIDGE_HEARTBEAT_SECONDS": "0.5",
            **env,
        }
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/healthz", timeout=0.5).status_code == 200:
                    return
            time.sleep(0.1)
        raise AssertionError("serve did not start:\n" + self.log.read_text())

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
        pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + " (.+)"
        found = re.search("^" + pattern + "$", text, re.MULTILINE)
        assert found, f"{name} {labels} not in /metrics"
        return float(found.group(1))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def serve_factory(tmp_path: Path) -> Iterator[type[Serve]]:
    started: list[Serve] = []

    class Started(Serve):
        def __init__(self, **env: str) -> None:
            super().__init__(tmp_path, **env)
            started.append(self)

    yield Started
    for s in started:
        s.close()


def connect(port: int, first: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if first:
        sock.sendall(first)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """The server closed it (EOF or reset); False while it is still open."""
    sock.setblocking(False)
    try:
        return sock.recv(65536) == b"" or closed_by_server(sock)
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_the_cap_stays_under_the_file_limit() -> None:
    assert connection_cap(2048, 1_048_576) == 2048
    assert connection_cap(2048, 1024) == 1024 - FD_RESERVE
    assert connection_cap(2048, 100) == 50  # at most half the limit is kept back


def test_a_flood_of_idle_and_slow_connections_leaves_healthz_answering(serve_factory) -> None:  # type: ignore[no-untyped-def]
    bridge = serve_factory(
        BRIDGE_MAX_CONNECTIONS="40",
        BRIDGE_KEEP_ALIVE_SECONDS="1",
        BRIDGE_HEADER_TIMEOUT_SECONDS="1",
    )
    flood: list[socket.socket] = []
    try:
        for i in range(150):  # idle, and slowloris (headers begun, never finished)
            flood.append(connect(bridge.port, b"GET /healthz HTTP/1.1\r\nX-A: " if i % 2 else b""))
        for _ in range(3):
            # Past the cap: an idle or half-sent connection made room for this one.
            assert httpx.get(f"{bridge.url}/healthz", timeout=3).status_code == 200
        time.sleep(0.2)
        open_now = [s for s in flood if not closed_by_server(s)]
        assert len(open_now) <= 40
        assert bridge.metric("ctmm_bridge_connections_closed_total", reason="evicted") >= 110
        # The rest are closed by the watchdog: idle ones and stalled headers alike.
        time.sleep(2.5)
        assert [s for s in open_now if not closed_by_server(s)] == []
        assert bridge.metric("ctmm_bridge_connections_closed_total", reason="idle") > 0
        assert bridge.metric("ctmm_bridge_connections_closed_total", reason="header_timeout") > 0
    finally:
        for s in flood:
            s.close()
    log = bridge.log.read_text()
    # Logged once per interval, not once per connection.
    assert log.count("connection limit reached: closing idle connections") == 1


def test_busy_connections_past_the_cap_are_refused_then_their_bodies_time_out(
    serve_factory,  # type: ignore[no-untyped-def]
) -> None:
    bridge = serve_factory(BRIDGE_MAX_CONNECTIONS="10", BRIDGE_BODY_TIMEOUT_SECONDS="1")
    head = (
        b"POST /clevertap/campaigns/c1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Bridge-Secret: " + CT_SECRET.encode() + b"\r\nContent-Length: 100\r\n\r\n{"
    )
    stalled = [connect(bridge.port, head) for _ in range(10)]
    try:
        time.sleep(0.3)  # every one of them is a call waiting for its body
        # Past the cap, with no idle connection to close, a new one is let in for a health
        # probe only: a call on it is refused at once, a probe answered.
        refused = connect(bridge.port, head)
        refused.settimeout(3)
        answer = refused.recv(4096)
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"connection limit" in answer
        assert b"retry-after: 5" in answer
        refused.close()
        assert httpx.get(f"{bridge.url}/healthz", timeout=3).status_code == 200
        time.sleep(2.5)  # the bodies never come: closed
        assert all(closed_by_server(s) for s in stalled)
        # (/metrics itself would have been refused while every connection was busy)
        assert bridge.metric("ctmm_bridge_connections_closed_total", reason="refused") >= 1
        assert bridge.metric("ctmm_bridge_connections_closed_total", reason="body_timeout") == 10
        assert httpx.get(f"{bridge.url}/healthz", timeout=3).status_code == 200
    finally:
        for s in stalled:
            s.close()
    assert "unhandled error" not in bridge.log.read_text()


def test_connections_let_in_for_probes_never_become_full_ones(
    serve_factory,  # type: ignore[no-untyped-def]
) -> None:
    """Past the cap a call is refused even when an idle probe connection could be closed for
    it: probe connections make room only for other probes, so the cap holds."""
    bridge = serve_factory(BRIDGE_MAX_CONNECTIONS="5", BRIDGE_BODY_TIMEOUT_SECONDS="30")
    head = (
        b"POST /clevertap/campaigns/c1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Bridge-Secret: " + CT_SECRET.encode() + b"\r\nContent-Length: 100000\r\n\r\n{"
    )
    held = [connect(bridge.port, head) for _ in range(5)]
    opened: list[socket.socket] = []
    try:
        time.sleep(0.3)
        for _ in range(30):
            opened.append(connect(bridge.port))  # idle: a probe connection, closable
            call = connect(bridge.port, head)
            opened.append(call)
            call.settimeout(3)
            answer = call.recv(4096)
            assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert httpx.get(f"{bridge.url}/healthz", timeout=3).status_code == 200
    finally:
        for s in held + opened:
            s.close()


def test_healthz_answers_while_slow_authenticated_bodies_hold_every_connection(
    serve_factory,  # type: ignore[no-untyped-def]
) -> None:
    """A flood of valid calls whose bodies trickle in keeps every connection busy (none may be
    evicted): ``/healthz`` and ``/readyz`` still answer on fresh connections, webhooks get 503."""
    bridge = serve_factory(BRIDGE_MAX_CONNECTIONS="20", BRIDGE_BODY_TIMEOUT_SECONDS="30")
    head = (
        b"POST /clevertap/campaigns/c1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Bridge-Secret: " + CT_SECRET.encode() + b"\r\nContent-Length: 100000\r\n\r\n{"
    )
    flood = [connect(bridge.port, head) for _ in range(40)]
    try:
        time.sleep(0.3)
        for _ in range(5):  # one probe after another, each on a new connection
            assert httpx.get(f"{bridge.url}/healthz", timeout=3).status_code == 200
        ready = httpx.get(f"{bridge.url}/readyz", timeout=3)
        assert ready.status_code in (200, 503)
        assert "checks" in ready.json()
        call = httpx.post(
            f"{bridge.url}/clevertap/campaigns/c1",
            json={"email": "a@example.com"},
            headers={"X-Bridge-Secret": CT_SECRET},
            timeout=3,
        )
        assert call.status_code == 503
        assert call.headers["retry-after"] == "5"
    finally:
        for s in flood:
            s.close()
    assert "unhandled error" not in bridge.log.read_text()


def test_sigterm_under_load_ends_within_the_grace_and_loses_nothing(serve_factory) -> None:  # type: ignore[no-untyped-def]
    bridge = serve_factory()
    statuses: Counter[int | str] = Counter()
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def load(n: int) -> None:
        i = 0
        with httpx.Client(base_url=bridge.url, timeout=10) as client:
            while not stop.is_set():
                email = f"u{n}-{i}@example.com"
                i += 1
                body = {"targetId": 1, "profiles": {"email": email, "objectId": f"__{email}"}}
                try:
                    resp = client.post("/clevertap/campaigns/c1", json=body, auth=("ct", CT_SECRET))
                except httpx.TransportError:
                    with lock:
                        statuses["refused"] += 1
                    if bridge.proc.poll() is not None:
                        return
                    time.sleep(0.01)
                    continue
                with lock:
                    statuses[resp.status_code] += 1
                    if resp.status_code == 200:
                        acknowledged.append(email)

    # Calls whose body stalls until after the grace: shutdown answers them 503.
    head = (
        b"POST /clevertap/campaigns/c1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Bridge-Secret: " + CT_SECRET.encode() + b"\r\nContent-Length: 100\r\n\r\n{"
    )
    stalled = [connect(bridge.port, head) for _ in range(3)]
    threads = [threading.Thread(target=load, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    sent_at = time.monotonic()
    bridge.proc.send_signal(signal.SIGTERM)
    bridge.proc.wait(timeout=30)
    took = time.monotonic() - sent_at
    stop.set()
    for t in threads:
        t.join(10)
    answers = []
    for s in stalled:
        s.settimeout(1)
        with contextlib.suppress(OSError):
            answers.append(s.recv(4096))
        s.close()

    assert took <= GRACE + 1, f"SIGTERM took {took:.2f} s"
    # uvicorn re-raises the signal once it has shut down cleanly, as the default handler would.
    assert bridge.proc.returncode in (0, -signal.SIGTERM)
    assert statuses[200] > 50, statuses
    assert not [s for s in statuses if isinstance(s, int) and s >= 500 and s != 503], statuses
    assert all(a.startswith(b"HTTP/1.1 503 ") for a in answers), answers
    assert len(answers) == 3
    with sqlite3.connect(bridge.db) as db:
        stored = {row[0] for row in db.execute("SELECT email FROM deliveries")}
    assert set(acknowledged) <= stored, "an acknowledged call was lost"
    assert "Exception in ASGI application" not in bridge.log.read_text()


def test_sigterm_lets_a_webhook_call_whose_body_is_arriving_finish(serve_factory) -> None:  # type: ignore[no-untyped-def]
    """A call whose body is still arriving when SIGTERM comes is a call in flight: it gets
    the grace to finish (200, stored), not an immediate 503."""
    bridge = serve_factory()
    body = b'{"profiles":[{"Email":"late@example.com","ObjectId":"x1"}]}'
    head = (
        b"POST /clevertap/campaigns/c1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Bridge-Secret: %s\r\nContent-Length: %d\r\n\r\n" % (CT_SECRET.encode(), len(body))
    )
    sock = connect(bridge.port, head + body[:-10])
    time.sleep(0.3)
    bridge.proc.send_signal(signal.SIGTERM)
    time.sleep(GRACE / 2)
    sock.sendall(body[-10:])
    sock.settimeout(5)
    answer = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            answer += chunk
    sock.close()
    bridge.proc.wait(timeout=10)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert b"connection: close" in answer.lower()
    with sqlite3.connect(bridge.db) as db:
        stored = {row[0] for row in db.execute("SELECT email FROM deliveries")}
    assert stored == {"late@example.com"}


# --- the cap's decisions, on protocol objects --------------------------------------------------


class _Transport(asyncio.Transport):
    """Enough of a socket transport for uvicorn's protocol to be made and refused."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _noop_app(scope: Any, receive: Any, send: Any) -> None:
    pass


async def test_past_the_cap_and_the_probe_headroom_a_connection_is_refused(
    settings: Settings,
) -> None:
    """One full connection (the cap), then ``PROBE_HEADROOM`` probe connections, all busy: the
    next is answered 503 and closed; when a probe goes idle, a newcomer takes its place as a
    probe, and the count of probes stays exact."""
    config = uvicorn.Config(app=_noop_app, http="httptools", loop="asyncio", log_level="error")
    config.load()
    watch = Watch(settings, cap=1)
    protocol = protocol_for(watch)
    state = ServerState()
    loop = asyncio.get_running_loop()

    def connect() -> tuple[Any, _Transport]:
        conn = protocol(config, state, {}, loop)
        transport = _Transport()
        conn.connection_made(transport)
        return conn, transport

    busy: list[Any] = []
    for _ in range(1 + PROBE_HEADROOM):
        conn, transport = connect()
        conn._evictable = lambda: False  # in the middle of a request
        busy.append(conn)
    assert [c._w_probe for c in busy] == [False] + [True] * PROBE_HEADROOM
    assert watch.probes == PROBE_HEADROOM

    refused, transport = connect()
    assert transport.written == [REFUSED_ANSWER]
    assert transport.closed
    assert refused not in state.connections
    assert watch.probes == PROBE_HEADROOM

    idle = busy[-1]
    idle._evictable = lambda: True  # answered its probe, now idle
    newcomer, _ = connect()
    assert newcomer._w_probe
    assert idle not in state.connections
    assert watch.probes == PROBE_HEADROOM
    idle.connection_lost(None)  # the closed one's loss, later: not counted twice
    assert watch.probes == PROBE_HEADROOM
    newcomer.connection_lost(None)
    assert watch.probes == PROBE_HEADROOM - 1


async def test_a_request_head_past_the_limit_is_answered_431_and_closed(
    settings: Settings,
) -> None:
    """A header of any size arriving in pieces is cut off once the head passes
    ``MAX_HEAD_BYTES`` (431, connection closed, counted); a large head within the limit, in
    pieces too, reaches the app."""
    config = uvicorn.Config(app=_noop_app, http="httptools", loop="asyncio", log_level="error")
    config.load()
    protocol = protocol_for(Watch(settings, cap=10))
    loop = asyncio.get_running_loop()

    def connect() -> tuple[Any, _Transport]:
        conn = protocol(config, ServerState(), {}, loop)
        transport = _Transport()
        conn.connection_made(transport)
        return conn, transport

    before = CONNECTIONS_CLOSED.labels("head_too_large")._value.get()
    conn, transport = connect()
    first = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: "
    conn.data_received(first)  # the read a request begins in is not counted
    sent = 0
    while not transport.closed and sent < 10 * MAX_HEAD_BYTES:
        conn.data_received(b"a" * 8192)
        sent += 8192
    assert transport.closed
    assert MAX_HEAD_BYTES < sent <= MAX_HEAD_BYTES + 8192
    assert b"".join(transport.written) == HEAD_TOO_LARGE_ANSWER
    assert HEAD_TOO_LARGE_ANSWER.startswith(b"HTTP/1.1 431 ")
    assert CONNECTIONS_CLOSED.labels("head_too_large")._value.get() == before + 1

    conn, transport = connect()
    header = b"X-A: " + b"a" * (MAX_HEAD_BYTES - 1024) + b"\r\n"
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n"
    for start in range(0, len(head), 8192):
        conn.data_received(head[start : start + 8192])
    assert not transport.closed
    assert conn.cycle is not None  # the request reached the app
    await asyncio.sleep(0)
    conn.connection_lost(None)


def test_a_huge_header_gets_431_and_healthz_keeps_answering(serve_factory) -> None:  # type: ignore[no-untyped-def]
    bridge = serve_factory()
    sock = connect(bridge.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: ")
    answer = b""
    with contextlib.suppress(OSError):
        for _ in range(2048):  # up to 16 MiB; the server closes long before
            sock.sendall(b"a" * 8192)
    sock.settimeout(5)
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert httpx.get(f"{bridge.url}/healthz", timeout=5).status_code == 200
    assert bridge.metric("ctmm_bridge_connections_closed_total", reason="head_too_large") == 1


async def _reading_app(scope: Any, receive: Any, send: Any) -> None:
    """Reads the whole body, then answers 200."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _connect(settings: Settings, app: Any = _reading_app) -> tuple[Any, _Transport]:
    config = uvicorn.Config(app=app, http="httptools", loop="asyncio", log_level="error")
    config.load()
    conn = protocol_for(Watch(settings, cap=10))(
        config, ServerState(), {}, asyncio.get_running_loop()
    )
    transport = _Transport()
    conn.connection_made(transport)
    return conn, transport


async def test_a_pipelined_body_does_not_count_towards_the_next_head(settings: Settings) -> None:
    """One read holding the end of a 100 KB request and the start of the next: no 431."""
    conn, transport = _connect(settings)
    body = b"x" * 100_000
    conn.data_received(
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
        + b"GET /b HTTP/1.1\r\nHost: x\r\n"
    )
    await asyncio.sleep(0.05)
    assert not transport.closed
    assert not any(w.startswith(b"HTTP/1.1 431") for w in transport.written)
    conn.connection_lost(None)


async def test_trailers_past_the_message_limit_close_the_connection(settings: Settings) -> None:
    """Chunked trailers are joined as slowly as headers: the bytes after a request's head are
    bounded too (twice the body limit, plus a head's worth), then the connection is closed."""
    small = settings.model_copy(update={"max_body_bytes": 2048})
    conn, transport = _connect(small)
    before = CONNECTIONS_CLOSED.labels("message_too_large")._value.get()
    conn.data_received(
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n"
    )
    await asyncio.sleep(0)
    conn.data_received(b"0\r\nX-Trailer: ")
    sent = 0
    while not transport.closed and sent < 1_000_000:
        conn.data_received(b"t" * 8192)
        await asyncio.sleep(0)
        sent += 8192
    assert transport.closed
    assert sent <= 2 * 2048 + MAX_HEAD_BYTES + 8192
    assert CONNECTIONS_CLOSED.labels("message_too_large")._value.get() == before + 1
    conn.connection_lost(None)
