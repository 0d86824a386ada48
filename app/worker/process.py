"""The embedded worker in a process of its own, a child of ``serve``.

In the API's process the worker's claims, commits and HTTP calls took turns with the
webhooks on one GIL, and delivering cost ingest most of its capacity (bench/RESULTS.md).
Here ``serve`` starts a child that runs the same ``WorkerRunner`` as ``ctmm-bridge worker``,
at the lowest CPU priority there is (``lower_priority``: Linux's ``SCHED_IDLE``, else
``nice``): when the cores are contended, ingest wins and deliveries wait, which costs nothing
(they are durable and rate-limited anyway).

The two ends of a socketpair are the whole protocol. The child writes ``ready <worker id>`` once
its database is open, then every ``METRICS_PUSH_SECONDS`` (and once more as it stops) its
``ctmm_bridge_*`` counters (``M``, a 4-byte length, a pickle), which the API adds to its own on
``/metrics``: the deliveries, attempts and upload counts live in the child's memory. The API
writes one byte when ingest commits (at most one per ``WAKE_INTERVAL_SECONDS``), so new work is
claimed at once instead of at the next poll. The child
ignores SIGINT/SIGTERM (Ctrl-C and systemd signal the whole group): it stops when its end reads
EOF, which happens when ``serve`` stops it (then calls in flight get
``BRIDGE_SHUTDOWN_GRACE_SECONDS`` to finish, as in ``worker``) and when ``serve`` dies, even by
SIGKILL (the kernel closes the API's end), so no orphan is left delivering. A child that dies is
started again after a growing delay; ``/readyz`` reports the worker as down meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import socket
import struct
import time
from collections.abc import Sequence
from typing import Any, cast

import structlog
from prometheus_client.metrics_core import Metric

from app.children import START_TIMEOUT, Child, ignore_stop_signals, restart_delay
from app.config import Settings
from app.logging import log_throttled
from app.metrics import bridge_families

log = structlog.get_logger(__name__)

#: How much lower the worker's CPU priority is than the API's where ``SCHED_IDLE`` is missing.
WORKER_NICE = 10
_WAKE = b"w"
#: At most one wake-up per this interval, the first at once and the next at the interval's end:
#: a flood commits ~500 batches a second, and the worker needs to hear that work is due, not of
#: every batch (each is a read, a task switch and a pass of its loop). At Mailmodo's default
#: rate the child's CPU in a flood halved, 8 to 4 µs per ingested call (bench/RESULTS.md); an
#: idle worker still hears of the first commit at once.
WAKE_INTERVAL_SECONDS = 0.01
#: How often the child sends its counters up (``/metrics`` is at most this much behind).
METRICS_PUSH_SECONDS = 1.0
_METRICS = b"M"
_LENGTH = struct.Struct(">I")


def metrics_frame() -> bytes:
    """This process's ``ctmm_bridge_*`` families, framed for the API."""
    blob = pickle.dumps(bridge_families(), protocol=pickle.HIGHEST_PROTOCOL)
    return _METRICS + _LENGTH.pack(len(blob)) + blob


# -- the child ------------------------------------------------------------------------------


def run_worker_process(sock: socket.socket, settings: Settings) -> None:
    """The child's entry point: run a ``WorkerRunner`` until the socket reads EOF."""
    ignore_stop_signals()
    priority = lower_priority()
    from app.logging import configure_logging
    from app.runtime import tune_gc_for_serving

    configure_logging(settings)
    log.info("worker process running below ingest", cpu_priority=priority, pid=os.getpid())
    tune_gc_for_serving()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        asyncio.run(_child(sock, settings))
    else:
        uvloop.run(_child(sock, settings))


def lower_priority() -> str:
    """Give the calling process the CPU only when ingest does not want it; says how.

    ``SCHED_IDLE`` (Linux): any normal task that wakes up preempts it at once, where a niced
    one keeps its slice and delays the API's and the ingest writer's wake-ups, which is what
    the answers' latency is made of. It is not starvation: the scheduler still gives it a
    small share (its weight is a third of ``nice 19``'s), and all of any idle core. Elsewhere,
    ``nice`` by ``WORKER_NICE``.
    """
    policy = getattr(os, "SCHED_IDLE", None)
    if policy is not None and hasattr(os, "sched_setscheduler"):
        try:
            os.sched_setscheduler(0, policy, os.sched_param(0))
            return "sched_idle"
        except OSError:
            pass
    try:
        os.nice(WORKER_NICE)
    except OSError:
        return "unchanged"
    return f"nice {WORKER_NICE}"


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _ChildLink(asyncio.Protocol):
    def __init__(self, wake: asyncio.Event, stop: asyncio.Event) -> None:
        self.wake = wake
        self.stop = stop

    def data_received(self, data: bytes) -> None:
        self.wake.set()

    def eof_received(self) -> bool:
        self.stop.set()
        return True  # keep our half open: nothing more to say, but say it cleanly

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop.set()


async def _child(sock: socket.socket, settings: Settings) -> None:
    from sqlalchemy import text

    from app.db import create_db_engine
    from app.worker.build import build_runner

    loop = asyncio.get_running_loop()
    stop, wake = asyncio.Event(), asyncio.Event()
    sock.setblocking(False)
    transport, _ = await loop.connect_accepted_socket(lambda: _ChildLink(wake, stop), sock=sock)
    engine = create_db_engine(settings, in_serve=True)
    try:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            runner = build_runner(engine, settings, own_process=True)
        except Exception as exc:
            transport.write(f"failed {type(exc).__name__}: {exc}"[:500].encode() + b"\n")
            return
        transport.write(f"ready {runner.worker_id}\n".encode())

        async def forward_wakes() -> None:
            while not stop.is_set():
                await wake.wait()
                wake.clear()
                runner.wake()  # on the runner's own loop: no hop through its pipe

        async def push_metrics() -> None:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), METRICS_PUSH_SECONDS)
                if not transport.is_closing():
                    transport.write(metrics_frame())

        forwarder = asyncio.create_task(forward_wakes())
        pusher = asyncio.create_task(push_metrics())
        try:
            await runner.run(stop)
        finally:
            forwarder.cancel()
            pusher.cancel()
            await runner.aclose()
            if not transport.is_closing():  # what the last calls counted
                transport.write(metrics_frame())
    finally:
        engine.dispose()
        transport.close()


def _child_main(sock: socket.socket, settings: Settings) -> None:
    """What the spawned child runs (looked up by name, so tests can put a stand-in here)."""
    run_worker_process(sock, settings)


# -- the API side ---------------------------------------------------------------------------


class _ParentLink(asyncio.Protocol):
    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.buf = b""
        self.ready: asyncio.Future[str] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        #: The child's counters as it last sent them.
        self.families: Sequence[Metric] = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.ready.done():
            if b"\n" not in self.buf:
                return
            line, _, self.buf = self.buf.partition(b"\n")
            self.ready.set_result(line.decode(errors="replace"))
        # Then counters: M, a 4-byte length, a pickle of the child's families (the newest wins).
        header = 1 + _LENGTH.size
        while len(self.buf) >= header and self.buf[:1] == _METRICS:
            (size,) = _LENGTH.unpack_from(self.buf, 1)
            if len(self.buf) < header + size:
                return
            blob, self.buf = self.buf[header : header + size], self.buf[header + size :]
            try:
                self.families = pickle.loads(blob)  # noqa: S301 (our own child)
            except Exception as exc:  # a child of another version; never fatal to the API
                log_throttled(log, "warning", "unreadable worker metrics", error=repr(exc))
        if self.buf[:1] not in (b"", _METRICS):
            self.buf = b""  # nothing else is ever sent: drop what cannot be read

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_result("failed the worker process exited while starting")
        if not self.closed.done():
            self.closed.set_result(None)


class WorkerProcess:
    """Runs, supervises and stops the worker child; what ``serve``'s app holds as its runner
    (``app.state.Runner``) when ``BRIDGE_EMBEDDED_WORKER_MODE=process``."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._link: _ParentLink | None = None
        self._child = Child("ctmm-bridge-worker")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_scheduled = False
        self._woke_at = float("-inf")  # time.monotonic() of the last wake-up sent
        self.worker_id = ""
        self.pid: int | None = None
        self.restarts = 0

    def metric_families(self) -> list[Sequence[Metric]]:
        """What the running child counted, as it last sent it (for ``/metrics``)."""
        link = self._link
        return [link.families] if link is not None and link.families else []

    @property
    def up(self) -> bool:
        """A child is running and has opened the database (readiness reports this)."""
        return self._link is not None and not self._link.closed.done()

    def wake_threadsafe(self) -> None:
        """New work was committed: tell the child (one byte, ``WAKE_INTERVAL_SECONDS`` apart).

        The process writer calls this on the event loop itself, once per commit: there the
        wake-up is scheduled directly, without ``call_soon_threadsafe``'s write to the loop's
        own pipe (two system calls per commit in the busiest process)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if _running_loop() is loop:
            self._schedule_wake()
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._schedule_wake)

    def _schedule_wake(self) -> None:
        loop = self._loop
        if self._wake_scheduled or loop is None:
            return
        self._wake_scheduled = True
        wait = self._woke_at + WAKE_INTERVAL_SECONDS - time.monotonic()
        if wait > 0:
            loop.call_later(wait, self._send_wake)
        else:
            loop.call_soon(self._send_wake)

    def _send_wake(self) -> None:
        self._wake_scheduled = False
        self._woke_at = time.monotonic()
        link = self._link
        if link is not None and link.transport is not None and not link.transport.is_closing():
            with contextlib.suppress(OSError, RuntimeError):
                link.transport.write(_WAKE)

    async def run(self, stop: asyncio.Event) -> None:
        """Keep a child running until ``stop``; then stop it within the grace period."""
        self._loop = asyncio.get_running_loop()
        failures = 0
        try:
            while not stop.is_set():
                if await self._spawn():
                    failures = 0
                    assert self._link is not None
                    stopped = asyncio.ensure_future(stop.wait())
                    waiters: set[asyncio.Future[Any]] = {stopped, self._link.closed}
                    try:
                        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        stopped.cancel()
                    if stop.is_set():
                        break
                    log.error("worker process died; restarting it", pid=self.pid)
                    await self._reap()
                delay = restart_delay(failures)
                failures += 1
                self.restarts += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        finally:
            await asyncio.shield(self._stop_child())
            self._child.stop_killing_at_exit()

    async def _spawn(self) -> bool:
        """Start a child and wait until it has opened the database; False if it failed."""
        loop = asyncio.get_running_loop()
        try:
            ours = await self._child.start(_child_main, self._settings)
        except Exception as exc:  # e.g. out of file descriptors
            log.error("could not start the worker process", error=repr(exc))
            return False
        _transport, link = await loop.create_unix_connection(_ParentLink, sock=ours)
        self._link = link
        try:
            answer = await asyncio.wait_for(asyncio.shield(link.ready), START_TIMEOUT)
        except TimeoutError:
            answer = f"failed no answer in {START_TIMEOUT:.0f} s"
        kind, _, detail = answer.partition(" ")
        if kind != "ready" or link.closed.done():
            log.error("worker process failed to start", reason=detail or answer)
            await self._stop_child()
            return False
        self.worker_id, self.pid = detail, self._child.pid
        log.info("worker process started", pid=self.pid, worker_id=self.worker_id)
        return True

    async def _stop_child(self) -> None:
        """EOF tells the child to stop: calls in flight get the grace period, then it exits;
        past that (plus a margin) it is killed."""
        link = self._link
        if link is not None and link.transport is not None and not link.transport.is_closing():
            with contextlib.suppress(OSError, RuntimeError):
                link.transport.write_eof()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.shield(link.closed), self._settings.shutdown_grace_seconds + 5
                )
            link.transport.close()
        await self._reap()

    async def _reap(self) -> None:
        self._link = None
        await self._child.reap()

    async def aclose(self) -> None:
        """Nothing left to close once ``run`` has returned (the child owns its clients)."""
