"""An idle worker wakes when new work is committed on PostgreSQL, from any API replica.

One thread per worker process holds a dedicated connection (not from the pool) that LISTENs
on ``app.outbox.notify.CHANNEL``; the ingest writers NOTIFY in their commit transactions
(``app.outbox.notify.announce``). A notification wakes the runner's loops, which claim at
once. Polling (``BRIDGE_WORKER_POLL_SECONDS``) stays the fallback: while the connection is
down the listener reconnects every second, and each reconnect wakes the loops once, in case
a notification was missed meanwhile. On SQLite there is nothing to listen to.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog
from sqlalchemy.engine import Engine

from app.logging import log_throttled
from app.outbox.notify import CHANNEL

log = structlog.get_logger(__name__)


class OutboxListener:
    """LISTENs in a thread of its own and calls ``on_notify`` (thread-safe) per wake-up."""

    def __init__(self, conninfo: str, on_notify: Callable[[], None]) -> None:
        self._conninfo = conninfo
        self._on_notify = on_notify
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Set once LISTEN is in force (tests and the benchmark wait for it).
        self.listening = threading.Event()

    def start(self) -> OutboxListener:
        self._thread = threading.Thread(target=self._run, name="outbox-listener", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
            self._thread = None

    def _run(self) -> None:
        # Imported here: only a worker on PostgreSQL listens, and the driver's import costs
        # every worker process start-up CPU.
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    self._on_notify()  # anything committed while we were not listening
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=0.5, stop_after=1):
                            self._on_notify()
            except psycopg.Error as exc:
                self.listening.clear()
                log_throttled(
                    log,
                    "warning",
                    "outbox listener lost its connection; polling",
                    key=type(exc).__name__,
                    error=str(exc)[:300],
                )
                self._stop.wait(1.0)
            except Exception as exc:
                self.listening.clear()
                log_throttled(
                    log,
                    "exception",
                    "outbox listener failed; polling meanwhile",
                    key=type(exc).__name__,
                )
                self._stop.wait(1.0)


def start_listener(engine: Engine, on_notify: Callable[[], None]) -> OutboxListener | None:
    """A running listener on PostgreSQL; None on SQLite."""
    if engine.dialect.name != "postgresql":
        return None
    url = engine.url.set(drivername="postgresql")
    return OutboxListener(url.render_as_string(hide_password=False), on_notify).start()
