"""A bridge cluster of real processes on one PostgreSQL database, and fake upstreams with fault
knobs, for the scale-out tests (``tests/test_scale_out.py``, ``tests/test_chaos.py``) and the
benchmarks that reuse them (``bench/chaos.py``, ``bench/scale_out.py``).

The fake serves Mailmodo (every path but ``/1/upload``) and CleverTap (``/1/upload``) on one
loopback port, over HTTP/1.1 keep-alive. It notes every record it accepted (Mailmodo: the
trigger's email; CleverTap: each record's ``objectId``), when, and how many CleverTap uploads
were open at once; ``fail_5xx`` and ``fail_429`` are the shares of requests refused.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

CT_SECRET = "ct-test-secret"
MM_SECRET = "mm-test-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class FakeUpstreams:
    """Mailmodo and CleverTap on loopback, with faults and a clock of every acceptance."""

    fail_5xx: float = 0.0
    fail_429: float = 0.0
    delay: float = 0.0
    upload_delay: float = 0.0
    #: the Retry-After of a 429 (None: no header, so the bridge backs off 5 s, 10 s, 20 s …)
    retry_after: str | None = None
    seed: int = 14
    #: (epoch, email) of every trigger answered 200
    triggers: list[tuple[float, str]] = field(default_factory=list)
    #: (epoch, objectId) of every record of an upload answered 200
    events: list[tuple[float, str]] = field(default_factory=list)
    requests: Counter[str] = field(default_factory=Counter)
    uploads_open: int = 0
    uploads_open_max: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.random = random.Random(self.seed)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                upload = self.path.startswith("/1/upload")
                status, answer = fake.answer(upload, raw)
                body = json.dumps(answer).encode()
                self.send_response(status)
                if status == 429 and fake.retry_after is not None:
                    self.send_header("Retry-After", fake.retry_after)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # Mailmodo contact reads and live checks: not used here
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        ThreadingHTTPServer.daemon_threads = True
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, upload: bool, raw: bytes) -> tuple[int, dict[str, Any]]:
        kind = "clevertap" if upload else "mailmodo"
        with self.lock:
            draw = self.random.random()
            if upload:
                self.uploads_open += 1
                self.uploads_open_max = max(self.uploads_open_max, self.uploads_open)
        try:
            time.sleep(self.upload_delay if upload else self.delay)
            if draw < self.fail_5xx:
                status = 503
            elif draw < self.fail_5xx + self.fail_429:
                status = 429
            else:
                status = 200
            with self.lock:
                self.requests[f"{kind} {status}"] += 1
                if status != 200:
                    return status, {"message": "fault injected", "status": "fail"}
                now = time.time()
                if upload:
                    records = json.loads(raw)["d"]
                    self.events.extend((now, r.get("objectId") or r["identity"]) for r in records)
                    return 200, {"status": "success", "processed": len(records), "unprocessed": []}
                self.triggers.append((now, json.loads(raw)["email"]))
                return 200, {"success": True, "message": "ok", "ref": f"ref-{len(self.triggers)}"}
        finally:
            if upload:
                with self.lock:
                    self.uploads_open -= 1

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def cluster_env(database_url: str, fake_url: str, **overrides: str) -> dict[str, str]:
    """The environment of every process of a test cluster (short timeouts, fast retries)."""
    env = {
        **os.environ,
        "BRIDGE_DATABASE_URL": database_url,
        "BRIDGE_EMBEDDED_WORKER": "false",
        "BRIDGE_CLEVERTAP_WEBHOOK_SECRETS": CT_SECRET,
        "BRIDGE_MAILMODO_WEBHOOK_SECRETS": MM_SECRET,
        "BRIDGE_MAILMODO_API_KEY": "key",
        "BRIDGE_MAILMODO_API_URL": fake_url,
        "BRIDGE_MAILMODO_RATE_PER_SECOND": "2000",
        "BRIDGE_MAILMODO_MAX_CONCURRENCY": "8",
        "BRIDGE_MAILMODO_TIMEOUT_SECONDS": "2",
        "BRIDGE_CLEVERTAP_ACCOUNT_ID": "TEST-ACCOUNT",
        "BRIDGE_CLEVERTAP_PASSCODE": "TEST-PASSCODE",
        "BRIDGE_CLEVERTAP_API_URL": fake_url,
        "BRIDGE_CLEVERTAP_TIMEOUT_SECONDS": "2",
        "BRIDGE_CLEVERTAP_LINGER_MS": "20",
        "BRIDGE_RETRY_SCHEDULE_SECONDS": "0.2,0.2,0.2,0.2,0.2,0.2,0.2,0.2,0.2,0.2",
        "BRIDGE_LEASE_SECONDS": "8",
        "BRIDGE_WORKER_POLL_SECONDS": "0.2",
        "BRIDGE_HEARTBEAT_SECONDS": "0.5",
        "BRIDGE_SHUTDOWN_GRACE_SECONDS": "3",
        "BRIDGE_LOG_FORMAT": "json",
        "BRIDGE_LOG_LEVEL": "WARNING",
    }
    env.update(overrides)
    return env


class Proc:
    """One ``ctmm-bridge serve`` or ``worker`` process, its output in ``log``."""

    def __init__(self, command: str, env: dict[str, str], log: Path) -> None:
        self.command = command
        self.env = dict(env)
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        if command == "serve":
            self.port = free_port()
            self.env["BRIDGE_PORT"] = str(self.port)
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> Proc:
        """Start the process; with ``wait``, return once it serves (``serve``: /healthz
        answers) or works (``worker``: its first heartbeat is in the database), so that faults
        injected next hit a running process, not one still importing or opening the database."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(  # noqa: S603 - our own CLI, fixed commands
                [sys.executable, "-m", "app.cli", self.command],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if wait and self.command == "serve":
            wait_for(self._healthy, 30, f"{self.command} to answer", on_fail=self.tail)
        elif wait:
            engine = create_engine(self.env["BRIDGE_DATABASE_URL"], poolclass=NullPool)
            try:
                wait_for(lambda: self._beating(engine), 30, "worker to beat", on_fail=self.tail)
            finally:
                engine.dispose()
        return self

    def _beating(self, engine: Engine) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.command} exited:\n{self.tail()}")
        try:
            with engine.connect() as conn:
                beats = conn.execute(
                    text("SELECT count(*) FROM worker_heartbeats WHERE pid = :pid"),
                    {"pid": self.proc.pid},
                ).scalar_one()
        except OperationalError:
            return False
        return bool(beats)

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.command} exited:\n{self.tail()}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=0.5).status_code == 200
        except httpx.TransportError:
            return False

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def kill(self, sig: signal.Signals = signal.SIGKILL, timeout: float = 30) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=timeout)
        self.proc = None


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    on_fail: Callable[[], str] | None = None,
) -> float:
    """Poll ``predicate`` until true; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{on_fail()}" if on_fail else ""))


def migrate(env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "app.cli", "db", "upgrade"], env=env, check=True, capture_output=True
    )


def trigger_body(email: str) -> dict[str, Any]:
    """A CleverTap campaign call for one recipient (one Mailmodo trigger)."""
    return {"targetId": 1, "profiles": {"email": email, "objectId": f"__{email}"}}


def callback_body(n: str) -> dict[str, Any]:
    """A Mailmodo "opened" callback with its own event id (one CleverTap event, objectId
    ``__<n>``)."""
    return {
        "event": "opened",
        "email": f"{n}@example.com",
        "clevertap_id": f"__{n}",
        "event_id": f"ev-{n}",
        "timestamp": 1700000000,
        "campaign_name": "Chaos",
    }


TRIGGER_PATH = "/clevertap/campaigns/c1"
CALLBACK_PATH = f"/mailmodo/{MM_SECRET}/events"
CT_AUTH = ("ct", CT_SECRET)


# -- PostgreSQL restart -----------------------------------------------------------------------


def postgres_restart_command() -> list[str] | None:
    """How to restart the local PostgreSQL cluster, or None when this process cannot (not
    root, no ``pg_ctlcluster``, or not exactly one installed version)."""
    if os.geteuid() != 0 or shutil.which("pg_ctlcluster") is None:
        return None
    versions = os.listdir("/etc/postgresql") if os.path.isdir("/etc/postgresql") else []
    if len(versions) != 1:
        return None
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main", "restart"]


def restart_postgres(command: list[str], url: str) -> float:
    """Restart the server and wait until it answers again; returns the seconds it was away."""
    from sqlalchemy import create_engine, text

    start = time.monotonic()
    subprocess.run(command, check=True, capture_output=True, timeout=60)  # noqa: S603
    engine = create_engine(url, connect_args={"connect_timeout": 2})

    def up() -> bool:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    try:
        wait_for(up, 60, "PostgreSQL to come back")
    finally:
        engine.dispose()
    return time.monotonic() - start
