"""Crash recovery with real processes (issue 9, item 3): `ctmm-bridge serve` is killed with
SIGKILL while its worker has calls in flight to a slow Mailmodo and is started again. The rows
the dead worker had leased must not wait for ``BRIDGE_LEASE_SECONDS`` (300 s, the default
here): every acknowledged call reaches Mailmodo within 30 s of the restart, and the calls sent
twice are only ones that were in flight at the kill (at least once, never more than that).

Run with ``-s`` to see the figures (in flight at the kill, duplicates, seconds to recover).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select

from app.outbox.models import Delivery, State
from tests.test_e2e_restart import Bridge, children_of, running, wait_for

CONCURRENCY = 4
LATENCY = 1.0
RECOVERY_BOUND = 30.0


class SlowMailmodo:
    """A Mailmodo on loopback that counts a call when it arrives (a call cut off by the kill
    has reached Mailmodo all the same) and answers after ``LATENCY`` seconds."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.answering = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.received.append(body["email"])
                    fake.answering += 1
                    ref = f"ref-{len(fake.received)}"
                try:
                    time.sleep(LATENCY)
                    raw = json.dumps({"success": True, "message": "ok", "ref": ref}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except OSError:
                    pass  # the bridge was killed: nobody reads the answer
                finally:
                    with fake.lock:
                        fake.answering -= 1

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow_mailmodo() -> Iterator[SlowMailmodo]:
    fake = SlowMailmodo()
    yield fake
    fake.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def bridge(
    request: pytest.FixtureRequest, tmp_path: Path, slow_mailmodo: SlowMailmodo
) -> Iterator[Bridge]:
    b = Bridge(tmp_path, slow_mailmodo.url)
    for name in ("BRIDGE_LEASE_SECONDS", "BRIDGE_HEARTBEAT_SECONDS"):
        b.env.pop(name)  # the defaults: a 300 s lease, a 5 s heartbeat
    b.env["BRIDGE_MAILMODO_TIMEOUT_SECONDS"] = "10"
    if request.param == "postgresql":
        from tests.conftest import _reset_postgres

        url: str = request.getfixturevalue("postgres_server")
        _reset_postgres(url)
        b.env["BRIDGE_DATABASE_URL"] = url
        subprocess.run(
            [sys.executable, "-m", "app.cli", "db", "upgrade"],
            env=b.env,
            check=True,
            capture_output=True,
        )
    yield b
    if b.proc is not None:
        b.proc.kill()
        b.proc.wait()


def emails_where(database_url: str, *where: Any) -> set[str]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return {str(email) for (email,) in conn.execute(select(Delivery.email).where(*where))}
    finally:
        engine.dispose()


def test_kill_9_in_flight_recovers_within_30_s_at_most_once_more(
    bridge: Bridge, slow_mailmodo: SlowMailmodo
) -> None:
    emails = [f"crash{i}@example.com" for i in range(16)]
    bridge.start()
    with httpx.Client(timeout=10) as client:
        for email in emails:
            assert bridge.post(client, email).status_code == 200
        # Every slot busy with a call Mailmodo is still answering, a few calls done before.
        wait_for(
            lambda: (
                len(slow_mailmodo.received) > CONCURRENCY and slow_mailmodo.answering == CONCURRENCY
            ),
            20,
            "a full set of calls in flight",
        )
        assert bridge.proc is not None
        children = children_of(bridge.proc.pid)
        # The whole bridge dies at once (a host crash, the OOM killer, a container killed):
        # its worker child gets no chance to give its leases back, as it would when only
        # `serve` died and the child saw its socket close.
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        bridge.stop(signal.SIGKILL)
        killed_at = time.monotonic()
        answering_at_kill = slow_mailmodo.answering
        wait_for(lambda: not any(running(pid) for pid in children), 20, "orphans to exit")
        database = bridge.env["BRIDGE_DATABASE_URL"]
        in_flight = emails_where(database, Delivery.leased_by.is_not(None))
        assert 0 < len(in_flight) <= CONCURRENCY

        restarted_at = time.monotonic()
        bridge.start()
        # Delivered and recorded: the rows leased at the kill were sent again, not left
        # waiting for their lease.
        wait_for(
            lambda: emails_where(database, Delivery.state == State.DELIVERED) == set(emails),
            RECOVERY_BOUND - (time.monotonic() - restarted_at),
            f"every call to reach Mailmodo within {RECOVERY_BOUND:g} s of the restart",
        )
        recovered = time.monotonic() - restarted_at
    counts = Counter(slow_mailmodo.received)
    twice = {email for email, n in counts.items() if n > 1}
    repeats = sum(n - 1 for n in counts.values())
    print(
        f"\nkill -9 recovery: {answering_at_kill} calls being answered and {len(in_flight)} rows "
        f"leased at the kill; {repeats} sent twice; all {len(emails)} at Mailmodo "
        f"{recovered:.1f} s after the restart began "
        f"({time.monotonic() - killed_at:.1f} s after the kill)"
    )
    assert set(counts) == set(emails)
    assert twice <= in_flight, "a call not in flight at the kill was sent twice"
    assert repeats <= len(in_flight)
    assert max(counts.values()) <= 2
    assert recovered < RECOVERY_BOUND
