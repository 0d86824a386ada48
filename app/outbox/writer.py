"""Group commit: concurrent inbound calls share one durable transaction.

One fsynced commit per call caps SQLite at about 2,000 calls/s on this class of machine.
Request handlers instead hand their record to a single writer thread, which takes whatever
has queued up while the previous commit was on disk, writes it in one transaction, commits,
and only then resolves every caller's future. Latency stays at about one commit; throughput
grows with concurrency. A batch that fails is split so one bad record cannot fail the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError, IntegrityError, OperationalError

from app.clock import utcnow
from app.db import unavailable
from app.logging import log_throttled
from app.metrics import INGEST_BATCH
from app.outbox import repository
from app.outbox.schemas import IngestRecord, IngestResult

log = structlog.get_logger(__name__)

MAX_BATCH = 512


class Writer(Protocol):
    """What the inbound services need of a writer: ``IngestWriter`` (a thread of this
    process) or ``ProcessWriter`` (a process of its own)."""

    @property
    def up(self) -> bool:
        """Calls can be stored now (readiness reports this)."""
        ...

    @property
    def health(self) -> CommitHealth:
        """Whether the last commit failed for want of a database (readiness reports this)."""
        ...

    async def submit(self, record: IngestRecord) -> IngestResult: ...

    async def aclose(self) -> None: ...


class CommitHealth:
    """The outcome of a writer's last commit: ``error`` is why it failed (the disk is full, the
    database is gone), None once one succeeds. A writer that is up but cannot commit answers
    every call 503; readiness must say so, so that traffic goes to a replica that can."""

    __slots__ = ("error",)

    def __init__(self) -> None:
        self.error: str | None = None

    def observe(self, outcomes: Sequence[Outcome]) -> None:
        """One check per commit, not per call: a batch fails or succeeds as a whole unless
        split, and a split batch with one stored record proves the database writes."""
        for outcome in outcomes:
            if isinstance(outcome, IngestResult):
                self.error = None
                return
        for outcome in outcomes:
            if isinstance(outcome, WriterUnavailable):
                self.error = str(outcome)[:300]
                return

    def recovered(self) -> None:
        """A write went through outside the writer (readiness probe): calls can be stored."""
        self.error = None


class WriterUnavailable(RuntimeError):
    """The writer is stopped or the database failed; the caller answers 503."""


class UnstorableRecord(ValueError):
    """The database refused this record's values for good (e.g. too long for a column on
    PostgreSQL): retrying cannot help, so the caller answers 422, not 503."""


@dataclass(slots=True)
class _Job:
    record: IngestRecord
    future: asyncio.Future[IngestResult]
    loop: asyncio.AbstractEventLoop


_STOP = object()

#: What became of one record: stored (or found to be a duplicate), or why not.
Outcome = IngestResult | UnstorableRecord | WriterUnavailable


class IngestWriter:
    """Owns the only write path of inbound calls in this process."""

    def __init__(
        self,
        engine: Engine,
        *,
        dedup_window_seconds: float,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self._engine = engine
        self._dedup_window = dedup_window_seconds
        self._on_commit = on_commit
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._running = False
        self._health = CommitHealth()

    @property
    def up(self) -> bool:
        return self._running

    @property
    def health(self) -> CommitHealth:
        return self._health

    def start(self) -> None:
        if self._thread is not None:
            return
        self._running = True
        self._thread = threading.Thread(target=self._run, name="ingest-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then stop; later submissions fail fast."""
        if self._thread is None:
            return
        self._running = False
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None
        # A submission that slipped past the running check after the last drain is refused,
        # not left waiting forever (it was never answered 2xx, so nothing is lost).
        stranded: list[_Job] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Job):
                stranded.append(item)
        if stranded:
            down = WriterUnavailable("the bridge is shutting down")
            self._resolve(stranded, [down] * len(stranded))

    async def aclose(self) -> None:
        await asyncio.to_thread(self.stop)

    async def submit(self, record: IngestRecord) -> IngestResult:
        """Resolve once ``record`` is committed (or raise ``WriterUnavailable``)."""
        if not self._running:
            raise WriterUnavailable("the bridge is shutting down")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[IngestResult] = loop.create_future()
        self._queue.put(_Job(record, future, loop))
        return await future

    # -- writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            jobs: list[_Job] = [first]  # type: ignore[list-item]
            while len(jobs) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                jobs.append(nxt)  # type: ignore[arg-type]
            self._write(jobs)
        # Anything that raced in after the stop marker still gets written.
        leftover: list[_Job] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                leftover.append(item)  # type: ignore[arg-type]
        if leftover:
            self._write(leftover)

    def _write(self, jobs: list[_Job]) -> None:
        outcomes = commit_batch(self._engine, [j.record for j in jobs], self._dedup_window)
        self._health.observe(outcomes)
        self._resolve(jobs, outcomes)
        INGEST_BATCH.observe(len(jobs))
        if self._on_commit is not None:
            self._on_commit()

    @staticmethod
    def _resolve(jobs: list[_Job], outcomes: Sequence[Outcome]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, Outcome]]] = {}
        for job, outcome in zip(jobs, outcomes, strict=True):
            by_loop.setdefault(job.loop, []).append((job, outcome))
        for loop, pairs in by_loop.items():
            # A closed loop means nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, pairs)


def _settle(pairs: list[tuple[_Job, Outcome]]) -> None:
    for job, outcome in pairs:
        settle(job.future, outcome)


def settle(future: asyncio.Future[IngestResult], outcome: Outcome) -> None:
    """Hand a record's outcome to the call waiting for it (unless it gave up waiting)."""
    if future.done():
        return
    if isinstance(outcome, IngestResult):
        future.set_result(outcome)
    else:
        future.set_exception(outcome)


def commit_batch(
    engine: Engine, records: Sequence[IngestRecord], dedup_window_seconds: float
) -> list[Outcome]:
    """Write ``records`` in one transaction; if a record's values made it fail, one by one, so
    that a single bad record fails alone. Shared by the writer thread and the writer process.

    A database that is unavailable (locked past the timeout, disk errors: ``OperationalError``)
    fails the whole batch at once: every record alone would wait out the same timeout again.
    """
    try:
        return list(_commit(engine, records, dedup_window_seconds))
    except Exception as exc:
        if unavailable(exc):
            # Once per interval per kind of error: a full disk fails every batch the same way.
            cause = exc.orig if isinstance(exc, OperationalError) else exc
            log_throttled(
                log,
                "error",
                "ingest batch not stored",
                key=type(cause).__name__,
                size=len(records),
                error=type(cause).__name__,
                reason=str(cause)[:200],
            )
            return [_failure(exc)] * len(records)
        if len(records) == 1:
            return [_failure(exc)]
        log.warning(
            "ingest batch failed, retrying one by one", size=len(records), error=type(exc).__name__
        )
        return [commit_batch(engine, [r], dedup_window_seconds)[0] for r in records]


def _commit(
    engine: Engine, records: Sequence[IngestRecord], dedup_window_seconds: float
) -> list[IngestResult]:
    for attempt in range(3):
        try:
            with engine.begin() as conn:
                return repository.ingest_batch(
                    conn, records, dedup_window_seconds=dedup_window_seconds, now=utcnow()
                )
        except DataError:
            raise  # the values themselves are the problem: no retry will fix them
        except IntegrityError:
            # Another replica inserted the same dedup key first; the retry sees it.
            if attempt == 2:
                raise
        except OperationalError as exc:
            # A lock wait that timed out has already waited long enough.
            if attempt == 2 or _timed_out(exc):
                raise
    raise AssertionError("unreachable")


def _timed_out(exc: OperationalError) -> bool:
    return isinstance(exc.orig, TimeoutError) or "locked" in str(exc.orig).lower()


def _failure(exc: BaseException) -> UnstorableRecord | WriterUnavailable:
    if isinstance(exc, DataError):
        return UnstorableRecord(str(exc.orig)[:300])
    return WriterUnavailable(f"database write failed: {exc!r}"[:500])
