"""Group commit in a process of its own.

In one CPython process the HTTP event loop and the writer thread take turns on one GIL, so
every call costs the sum of both (bench/RESULTS.md). Here the API process only serialises
each call's record and sends it down a socket; a child process, with its own interpreter and
its own core, commits whatever has arrived in one transaction and sends back every record's
outcome. The answer to CleverTap still waits for the commit (and its fsync): the durability
contract is unchanged, only the work is spread over two cores, the way a database server
would take it.

Wire format, both ways: frames of a 4-byte big-endian length and a pickle. The API sends
``[(seq, to_wire(record)), ...]`` (plain tuples); the child first sends ``("ready", pid)`` or
``("failed", reason)``, then one ``[(seq, Outcome), ...]`` per commit. The child never acts
on a signal (Ctrl-C and systemd signal the whole group): it stops when the API process closes
its end of the socket, after committing and answering everything it has read, so a graceful
stop loses nothing, and a dead API process (SIGKILL included) leaves no orphan behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pickle
import socket
import struct
from collections.abc import Callable
from typing import Any, cast

import structlog
from sqlalchemy import text

from app.children import START_TIMEOUT, Child, ignore_stop_signals, restart_delay
from app.config import Settings
from app.metrics import INGEST_BATCH
from app.outbox.models import CallStatus, Direction, Operation, Source, State, Upstream
from app.outbox.schemas import IdentityObservation, IngestRecord, IngestResult, NewDelivery
from app.outbox.writer import (
    MAX_BATCH,
    CommitHealth,
    Outcome,
    WriterUnavailable,
    commit_batch,
    settle,
)

log = structlog.get_logger(__name__)

_HEADER = struct.Struct(">I")
#: One call on the wire: the API's sequence number and the record (``to_wire``).
Job = tuple[int, tuple[Any, ...]]
_RECV = 1 << 20


def _frame(obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def _split_frames(buf: bytearray) -> list[Any]:
    """Every complete frame at the start of ``buf``, removed from it."""
    out: list[Any] = []
    pos = 0
    while len(buf) - pos >= _HEADER.size:
        (size,) = _HEADER.unpack_from(buf, pos)
        end = pos + _HEADER.size + size
        if end > len(buf):
            break
        # Only ever a socketpair between this process and its own child: trusted data.
        out.append(pickle.loads(buf[pos + _HEADER.size : end]))  # noqa: S301
        pos = end
    del buf[:pos]
    return out


# -- records on the wire ------------------------------------------------------------------
#
# A record pickled as dataclasses and enums costs ~18 µs of the API's CPU per call; as plain
# tuples ~4 µs. The field lists are checked against the dataclasses by the tests.


def to_wire(r: IngestRecord) -> tuple[Any, ...]:
    return (
        r.source.value,
        r.route,
        r.target,
        r.status.value,
        r.http_status,
        r.received_at,
        r.body,
        r.content_type,
        r.body_truncated,
        r.reason,
        r.dedup_key,
        r.skipped,
        r.request_id,
        [
            (
                d.operation.value,
                d.upstream.value,
                d.direction.value,
                d.target,
                d.email,
                d.clevertap_id,
                d.payload,
                d.state.value,
                d.reason,
                d.next_attempt_at,
                d.identity_policy,
                d.park_until,
            )
            for d in r.deliveries
        ],
        [(i.email, i.clevertap_id, i.source) for i in r.identities],
    )


# Enum members by value, without EnumType.__call__ (a few µs each, several per record).
_SOURCE, _STATUS = Source._value2member_map_, CallStatus._value2member_map_
_OPERATION, _UPSTREAM = Operation._value2member_map_, Upstream._value2member_map_
_DIRECTION, _STATE = Direction._value2member_map_, State._value2member_map_


def from_wire(w: tuple[Any, ...]) -> IngestRecord:
    (source, route, target, status, http_status, received_at, body, content_type) = w[:8]
    (body_truncated, reason, dedup_key, skipped, request_id, deliveries, identities) = w[8:]
    return IngestRecord(
        source=_SOURCE[source],  # type: ignore[arg-type]
        route=route,
        target=target,
        status=_STATUS[status],  # type: ignore[arg-type]
        http_status=http_status,
        received_at=received_at,
        body=body,
        content_type=content_type,
        body_truncated=body_truncated,
        reason=reason,
        dedup_key=dedup_key,
        skipped=skipped,
        request_id=request_id,
        deliveries=[
            NewDelivery(
                operation=_OPERATION[d[0]],  # type: ignore[arg-type]
                upstream=_UPSTREAM[d[1]],  # type: ignore[arg-type]
                direction=_DIRECTION[d[2]],  # type: ignore[arg-type]
                target=d[3],
                email=d[4],
                clevertap_id=d[5],
                payload=d[6],
                state=_STATE[d[7]],  # type: ignore[arg-type]
                reason=d[8],
                next_attempt_at=d[9],
                identity_policy=d[10],
                park_until=d[11],
            )
            for d in deliveries
        ],
        identities=[IdentityObservation(*i) for i in identities],
    )


# -- the child process ---------------------------------------------------------------------


def run_writer(sock: socket.socket, settings: Settings) -> None:
    """The child's entry point (also runnable in a test, on a plain socket)."""
    ignore_stop_signals()
    from app.checkpoint import Checkpointer, for_writer
    from app.db import create_db_engine
    from app.logging import configure_logging
    from app.runtime import tune_gc_for_serving

    configure_logging(settings)
    tune_gc_for_serving()
    sock.setblocking(True)
    checkpointer: Checkpointer | None = None
    try:
        engine = create_db_engine(settings, in_serve=True)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        with contextlib.suppress(OSError):
            sock.sendall(_frame(("failed", f"{type(exc).__name__}: {exc}"[:500])))
        return
    sock.sendall(_frame(("ready", os.getpid())))
    checkpointer = for_writer(settings, engine)
    if checkpointer is not None:
        checkpointer.start()
    buf = bytearray()
    eof = False
    try:
        while not eof:
            jobs, eof = _read_jobs(sock, buf)
            for start in range(0, len(jobs), MAX_BATCH):
                chunk = jobs[start : start + MAX_BATCH]
                outcomes = commit_batch(
                    engine,
                    [from_wire(record) for _, record in chunk],
                    settings.dedup_window_seconds,
                )
                sock.sendall(
                    _frame(
                        [(seq, outcome) for (seq, _), outcome in zip(chunk, outcomes, strict=True)]
                    )
                )
                if checkpointer is not None:  # after the answers: no call waits for it
                    checkpointer.committed()
                    checkpointer.catch_up()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the API process is gone; what it sent was never answered, so nothing is lost
    finally:
        if checkpointer is not None:
            checkpointer.stop()
        engine.dispose()
        if checkpointer is not None:
            checkpointer.release_index()  # after the last connection (app.checkpoint)
        sock.close()


def _read_jobs(sock: socket.socket, buf: bytearray) -> tuple[list[Job], bool]:
    """Block until at least one frame (or EOF), then take everything else already there."""
    jobs: list[Job] = []
    while True:
        for frame in _split_frames(buf):
            jobs.extend(frame)
        if jobs:
            break
        data = sock.recv(_RECV)
        if not data:
            return jobs, True  # a partial frame at EOF was never answered: drop it
        buf += data
    while True:
        try:
            data = sock.recv(_RECV, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return jobs, False
        if not data:
            for frame in _split_frames(buf):
                jobs.extend(frame)
            return jobs, True
        buf += data
        for frame in _split_frames(buf):
            jobs.extend(frame)


def _child_main(sock: socket.socket, settings: Settings) -> None:
    """What the spawned child runs (looked up by name, so tests can put a stand-in here)."""
    run_writer(sock, settings)


# -- the API side --------------------------------------------------------------------------


class _Link(asyncio.Protocol):
    """The API's end of one child's socket."""

    def __init__(self, owner: ProcessWriter) -> None:
        self.owner = owner
        self.buf = bytearray()
        self.ready: asyncio.Future[tuple[str, Any]] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's do not subclass it

    def data_received(self, data: bytes) -> None:
        self.buf += data
        for frame in _split_frames(self.buf):
            if isinstance(frame, tuple):
                if not self.ready.done():
                    self.ready.set_result(frame)
                continue
            self.owner._settle(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_result(("failed", "the writer process exited while starting"))
        if not self.closed.done():
            self.closed.set_result(None)
        self.owner._link_lost(self)


class ProcessWriter:
    """Submits records to the writer process; restarts it if it dies.

    While no child is up, ``submit`` raises ``WriterUnavailable`` and the caller answers 503
    with Retry-After: a call is refused, never acknowledged and lost. A call in flight when a
    child dies is refused the same way; if the child had committed it, CleverTap's retry is
    recognised as a duplicate and answered with the original ids.
    """

    def __init__(self, settings: Settings, *, on_commit: Callable[[], None] | None = None) -> None:
        self._settings = settings
        self._on_commit = on_commit
        self._seq = itertools.count(1)
        self._pending: dict[int, asyncio.Future[IngestResult]] = {}
        self._unsent: list[Job] = []
        self._flush_scheduled = False
        self._link: _Link | None = None
        self._child = Child("ctmm-bridge-writer")
        self._running = False
        self._restarts = 0
        self._restart_task: asyncio.Task[None] | None = None
        self._health = CommitHealth()
        self.pid: int | None = None

    @property
    def health(self) -> CommitHealth:
        return self._health

    @property
    def up(self) -> bool:
        """A child is ready to take records (readiness reports this)."""
        return self._link is not None

    async def start(self) -> None:
        """Start the child and wait until it has opened the database (raises if it cannot)."""
        self._running = True
        reason = await self._spawn()
        if reason is not None:
            self._running = False
            self._child.stop_killing_at_exit()
            raise WriterUnavailable(f"the writer process did not start: {reason}")

    async def _spawn(self) -> str | None:
        """Start a child and wait for it to open the database: None, or why it failed.

        Whatever fails or is cancelled on the way, the sockets are closed and the child is
        stopped, so nothing half-started is left behind.
        """
        loop = asyncio.get_running_loop()
        ours = await self._child.start(_child_main, self._settings)
        process = self._child.process
        link: _Link | None = None
        ready = False
        try:
            _transport, link = await loop.create_unix_connection(lambda: _Link(self), sock=ours)
            try:
                kind, detail = await asyncio.wait_for(asyncio.shield(link.ready), START_TIMEOUT)
            except TimeoutError:
                kind, detail = "failed", f"no answer in {START_TIMEOUT:.0f} s"
            if kind == "ready" and link.closed.done():
                # It said ready and died before this coroutine resumed: nobody else noticed.
                kind, detail = "failed", "the writer process exited right after starting"
            if kind != "ready":
                log.error("ingest writer process failed to start", reason=detail)
                return str(detail)
            ready = True
        finally:
            if not ready:
                if link is not None and link.transport is not None:
                    link.transport.close()
                else:
                    ours.close()
                # Started: stop it (shielded from cancellation).
                await asyncio.shield(self._child.reap(process))
        self.pid = int(detail)
        self._link = link
        log.info("ingest writer process started", pid=self.pid)
        if self._unsent:
            self._schedule_flush()
        return None

    async def submit(self, record: IngestRecord) -> IngestResult:
        """Resolve once ``record`` is committed (or raise ``WriterUnavailable``)."""
        if not self._running or self._link is None:
            raise WriterUnavailable(
                "the bridge is shutting down" if not self._running else "the writer is restarting"
            )
        seq = next(self._seq)
        future: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        self._pending[seq] = future
        try:
            self._unsent.append((seq, to_wire(record)))
        except Exception:
            self._pending.pop(seq, None)
            raise
        self._schedule_flush()
        try:
            return await future
        finally:
            self._pending.pop(seq, None)

    def _schedule_flush(self) -> None:
        # Every call that arrives in one turn of the event loop goes down in one write.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        link = self._link
        if not self._unsent or link is None or link.transport is None:
            return
        batch, self._unsent = self._unsent, []
        try:
            if link.transport.is_closing():  # the child is gone; connection_lost restarts it
                raise ConnectionResetError("the writer process closed its socket")
            link.transport.write(_frame(batch))
        except Exception as exc:  # e.g. a record that cannot be pickled: refuse those calls
            for seq, _ in batch:
                future = self._pending.get(seq)
                if future is not None:
                    settle(future, WriterUnavailable(f"could not hand the call over: {exc!r}"))

    def _settle(self, results: list[tuple[int, Outcome]]) -> None:
        self._health.observe([outcome for _, outcome in results])
        for seq, outcome in results:
            future = self._pending.get(seq)
            if future is not None:
                settle(future, outcome)
        INGEST_BATCH.observe(len(results))
        self._restarts = 0
        if self._on_commit is not None:
            self._on_commit()

    def _link_lost(self, link: _Link) -> None:
        if link is not self._link:
            return
        self._link = None
        self._fail_pending("the writer process stopped before answering")
        if self._running:
            log.error("ingest writer process died; restarting it", pid=self.pid)
            self._restart_task = asyncio.get_running_loop().create_task(self._restart())

    def _fail_pending(self, reason: str) -> None:
        self._unsent = []
        for future in list(self._pending.values()):
            settle(future, WriterUnavailable(reason))

    async def _restart(self) -> None:
        await self._child.reap()
        while self._running and self._link is None:
            delay = restart_delay(self._restarts)
            self._restarts += 1
            await asyncio.sleep(delay)
            if not self._running:
                return
            try:
                if await self._spawn() is None:
                    return
            except Exception as exc:  # e.g. out of file descriptors: keep trying
                log.error("could not restart the ingest writer process", error=repr(exc))

    async def aclose(self, grace_seconds: float = 30.0) -> None:
        """Stop taking calls, let the child commit and answer what it has, then stop it."""
        self._running = False
        if self._restart_task is not None:
            self._restart_task.cancel()
            with contextlib.suppress(BaseException):
                await self._restart_task
        link = self._link
        if link is not None and link.transport is not None:
            self._flush()
            if link.transport.can_write_eof() and not link.transport.is_closing():
                link.transport.write_eof()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(link.closed), grace_seconds)
            link.transport.close()
        self._link = None
        self._fail_pending("the bridge is shutting down")
        await self._child.reap()
        self._child.stop_killing_at_exit()
