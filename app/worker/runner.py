"""The worker loop: when to claim, how many in flight, heartbeats, and graceful shutdown.

It runs inside ``serve`` (``BRIDGE_EMBEDDED_WORKER=true``) or alone as ``ctmm-bridge worker``;
any number of workers may share one PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Callable, Coroutine
from contextlib import suppress
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.engine import Engine

from app import db
from app.clock import utcnow
from app.config import Settings
from app.logging import log_throttled
from app.outbox import repository, transitions
from app.outbox.repository import Claimed
from app.system import recovery
from app.system import repository as system_repo
from app.worker.consumer import RowDeliverer
from app.worker.delivery import MailmodoDeliverer
from app.worker.mailmojo import MailmojoDeliverer
from app.worker.notify import start_listener
from app.worker.upload import CleverTapUploader

log = structlog.get_logger(__name__)


#: With fewer than ``refill`` slots free, the next claim waits at most this long after the
#: last one (a few ms: a batch of claims, not one transaction per completion).
REFILL_SECONDS = 0.005
#: An outcome that no claim is coming to carry (nothing more is due, or the slots are full)
#: is committed at most this long after it arrived: outcomes that finish close together share
#: one transaction instead of one each (a drain's CPU per delivery fell ~12 %).
OUTCOME_LINGER_SECONDS = 0.02
#: Ingest first on the SQLite write lock, as on the CPU (``app.worker.process``): while ingest
#: commits keep waking this worker and another process was found holding the lock, both within
#: the last ``YIELD_WINDOW_SECONDS``, a round starts at most every ``YIELD_SECONDS``. A round
#: holds the lock for about a millisecond, and at the default concurrency a busy writer met
#: ~150 of them a second, waiting for each (bench/RESULTS.md). Spaced out, each round carries
#: more of the calls that finished meanwhile. A drain (no ingest), workers that only meet each
#: other on the lock, and PostgreSQL (no such lock) are never spaced.
#:
#: Ingest first on the CPU too: under the same condition a round also waits until the worker
#: process's CPU time since the previous round (that round's transaction, the calls it sent,
#: their answers) is at most ``BRIDGE_WORKER_INGEST_CPU_SHARE`` of the time between them.
#: ``SCHED_IDLE`` alone did not keep delivery off ingest's back: on a 2-vCPU VM a worker using
#: 0.17 core cost ingest 12-20 %, and an idle-class process doing nothing but 0.12 core of
#: Python cost it 8-15 % (bench/RESULTS.md, session 16).
YIELD_SECONDS = 0.02
YIELD_WINDOW_SECONDS = 0.5
#: However busy ingest is and whatever else this process spent, a round at least this often.
YIELD_MAX_SECONDS = 1.0


async def _set_when(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Wait for ``event`` at most ``seconds``; True when the time ran out."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return True
    return False


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class WorkerRunner:
    """Keeps up to ``concurrency`` deliveries in flight and shuts down without losing any."""

    def __init__(
        self,
        *,
        engine: Engine,
        settings: Settings,
        mailmodo: MailmodoDeliverer | None,
        clevertap: CleverTapUploader | None = None,
        mailmojo: MailmojoDeliverer | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.mailmodo = mailmodo
        self.clevertap = clevertap
        self.mailmojo = mailmojo
        self.worker_id = worker_id or new_worker_id()
        self.started_at = utcnow()
        self.me = recovery.Me(self.worker_id)
        self._wakes: list[asyncio.Event] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        #: ``time.monotonic()`` of the last wake-up by a commit (ingest, LISTEN/NOTIFY).
        self.woken_at = float("-inf")
        #: No round before this ``time.monotonic()`` (the database failed the last one), and
        #: the pause after the next failure.
        self._db_retry_at = 0.0
        self._db_retry = db.RETRY_SECONDS
        #: The share of a core this worker may use while ingest is busy (None: no cap). Set
        #: where the worker has a process of its own (``serve``'s child, ``ctmm-bridge
        #: worker``), whose CPU time is then the worker's: in the API's process (task mode)
        #: it would count the API's too.
        self.cpu_share: float | None = None
        #: This process's CPU seconds (all threads): what the ingest CPU share is counted in.
        self.cpu_clock: Callable[[], float] = time.process_time

    async def aclose(self) -> None:
        """Close the upstream clients (after ``run`` has returned)."""
        if self.mailmodo is not None:
            await self.mailmodo.client.aclose()
        if self.clevertap is not None:
            await self.clevertap.client.aclose()
        if self.mailmojo is not None:
            await self.mailmojo.client.aclose()

    def wake_threadsafe(self) -> None:
        """Called by the ingest writer after a commit: new work may be due now."""
        self.woken_at = time.monotonic()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake_all)

    def wake(self) -> None:
        """``wake_threadsafe`` from the runner's own event loop (the worker process's link)."""
        self.woken_at = time.monotonic()
        self._wake_all()

    def _wake_all(self) -> None:
        for event in self._wakes:
            event.set()

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        listener = start_listener(self.engine, self.wake_threadsafe)  # W13: LISTEN/NOTIFY
        log.info(
            "worker started",
            worker_id=self.worker_id,
            mailmodo="on" if self.mailmodo else "off (BRIDGE_MAILMODO_API_KEY not set)",
            mailmojo="on" if self.mailmojo else "off (BRIDGE_MAILMOJO_API_TOKEN not set)",
        )
        # Before the first claim: say we are alive, then take back what gone workers held.
        await self._tick()
        tasks = [
            asyncio.create_task(self._heartbeat(stop), name="heartbeat"),
            asyncio.create_task(self._maintenance(stop), name="maintenance"),
        ]
        if self.mailmodo is not None:
            tasks.append(
                asyncio.create_task(
                    self._deliver_loop(
                        self.mailmodo,
                        self.settings.mailmodo_max_concurrency,
                        stop,
                        self.settings.mailmodo_rate_per_second,
                    ),
                    name="mailmodo-deliveries",
                )
            )
        if self.mailmojo is not None:
            tasks.append(
                asyncio.create_task(
                    self._deliver_loop(
                        self.mailmojo,
                        self.settings.mailmojo_max_concurrency,
                        stop,
                        self.settings.mailmojo_rate_per_second,
                    ),
                    name="mailmojo-deliveries",
                )
            )
        if self.clevertap is not None:
            tasks.append(
                asyncio.create_task(
                    self._upload_loop(self.clevertap, stop), name="clevertap-uploads"
                )
            )
        try:
            await asyncio.gather(*tasks)
        finally:
            if listener is not None:  # W13
                await asyncio.to_thread(listener.stop)
            for task in tasks:
                task.cancel()
            with suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)
            with suppress(Exception):
                await asyncio.to_thread(self._forget)
            log.info("worker stopped", worker_id=self.worker_id)

    def _forget(self) -> None:
        with self.engine.begin() as conn:
            system_repo.forget_worker(conn, self.worker_id)

    def _beat(self) -> None:
        now = utcnow()
        with self.engine.begin() as conn:
            system_repo.beat(
                conn,
                worker_id=self.worker_id,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                started_at=self.started_at,
                now=now,
                pid_namespace=self.me.pid_namespace,
            )
        # Committed: the consumers' lease fence measures from here too.
        for consumer in (self.mailmodo, self.mailmojo, self.clevertap):
            if consumer is not None:
                consumer.beat_at = now

    def _reclaim(self) -> None:
        """Leases of gone workers come back now, not when they run out (``app.system.recovery``)."""
        now = utcnow()
        with self.engine.begin() as conn:
            found = recovery.reclaim_from_gone_workers(
                conn,
                me=self.me,
                now=now,
                stale_after=recovery.gone_after(self.settings.heartbeat_seconds),
            )
        for worker_id, why in found.gone.items():
            log.warning("worker gone; its leased items are due again", gone=worker_id, why=why)
        if found.rows:
            log.warning(
                "took back items leased by gone workers (calls in flight may be sent again)",
                rows=found.rows,
            )

    def _maintain(self) -> None:
        """Housekeeping every worker may do (idempotent): parked events and retention."""
        now = utcnow()
        with self.engine.begin() as conn:
            released = repository.release_resolvable_parked(conn, transitions.release_parked(now))
            expired = repository.expire_parked(
                conn, transitions.expire_parked(now, ttl_hours=self.settings.park_ttl_hours)
            )
        if released or expired:
            log.info("parked events", released=released, expired_to_dead=expired)
        self.prune(now)

    def prune(self, now: datetime, *, batch: int = 500, max_batches: int = 20) -> int:
        """Retention in small transactions, so ingest never waits long behind it; what is
        left over is taken at the next tick."""
        before = now - timedelta(days=self.settings.retention_days)
        pruned = 0
        for prune in (repository.prune_delivered, repository.prune_finished_calls):
            for _ in range(max_batches):
                with self.engine.begin() as conn:
                    count = prune(conn, before=before, limit=batch)
                pruned += count
                if count < batch:
                    break
        if pruned:
            log.info(
                "retention pruned old delivered items",
                rows=pruned,
                retention_days=self.settings.retention_days,
            )
        return pruned

    async def _tick(self) -> None:
        for job in (self._beat, self._reclaim):
            try:
                await asyncio.to_thread(job)
            except Exception as exc:
                log_throttled(
                    log,
                    "exception",
                    "periodic job failed",
                    key=(job.__name__, type(exc).__name__),
                    job=job.__name__,
                )

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        """Beat and sweep, apart from the slower housekeeping so that it never delays a beat
        (a worker whose beat is late by ``GONE_AFTER_BEATS`` intervals loses its leases)."""
        while not stop.is_set():
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.heartbeat_seconds)
            if not stop.is_set():
                await self._tick()

    async def _maintenance(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.to_thread(self._maintain)
            except Exception as exc:
                log_throttled(
                    log,
                    "exception",
                    "periodic job failed",
                    key=("_maintain", type(exc).__name__),
                    job="_maintain",
                )
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.heartbeat_seconds)

    def _new_wake(self) -> asyncio.Event:
        event = asyncio.Event()
        self._wakes.append(event)
        return event

    async def _deliver_loop(
        self,
        deliverer: RowDeliverer[Any],
        concurrency: int,
        stop: asyncio.Event,
        rate_per_second: float,
    ) -> None:
        """Keep up to ``concurrency`` calls in flight with one transaction a round.

        Each round commits the outcomes that have arrived (``app.worker.batch``) and, in the
        same transaction, claims rows (with their rate slots) for the slots that frees: when
        ``refill`` slots are free, or ``REFILL_SECONDS`` after the last claim when fewer
        are, or at once when nothing is in flight; not after every completion. Outcomes that
        no claim is due to carry wait at most ``OUTCOME_LINGER_SECONDS`` for one. A slot stays
        busy until its call's outcome is committed, so a crash re-sends at most
        ``concurrency`` calls. After a claim comes back short the loop claims again only
        when new work is committed (the writer's wake-up) or at the next poll.
        """
        inflight: set[asyncio.Task[object]] = set()
        wake = self._new_wake()
        # One event for everything the loop waits for: new work committed (registered as a
        # wake too), an outcome queued, a call's task ending, the stop. Waiting is then one
        # future, not a task per event and callbacks on every call in flight each time.
        activity = asyncio.Event()
        self._wakes.append(activity)
        relay = asyncio.create_task(_set_when(stop, activity), name="deliver-loop-stop")
        outcomes = deliverer.outcomes
        outcomes.drive(activity)
        # Claim no more than about two seconds of rate at once, so leases stay short.
        burst = max(1, int(rate_per_second * 2))
        refill = max(1, min(concurrency // 2, burst))
        backlog = True  # there may be due rows: claim
        last_claim = 0.0
        last_round = 0.0
        cpu_at_round = self.cpu_clock()  # the process's CPU time when the last round began
        first_answer: float | None = None  # when the oldest outcome not yet committed came
        try:
            while not stop.is_set():
                if wake.is_set():
                    wake.clear()
                    backlog = True
                activity.clear()
                answered = outcomes.pending  # slots this round's commit frees
                free = concurrency - len(inflight) + answered
                busy = len(inflight) - answered
                now = time.monotonic()
                claim = (
                    free > 0
                    and backlog
                    and (busy == 0 or free >= refill or now - last_claim >= REFILL_SECONDS)
                )
                if answered and first_answer is None:
                    first_answer = now
                lingered = first_answer is not None and now - first_answer >= OUTCOME_LINGER_SECONDS
                if claim or (answered and lingered):
                    later = max(self._yield_until(last_round, cpu_at_round, now), self._db_retry_at)
                    if later > now:
                        # Only a stop cuts this short: what comes meanwhile (wake-ups by
                        # ingest commits, outcomes) is taken by the round then.
                        await _wait(stop, later - now)
                        continue
                    last_round = now
                    cpu_at_round = self.cpu_clock()
                    first_answer = None
                    limit = min(free, burst) if claim else 0
                    rows = await self._round(deliverer, limit)
                    if rows is None:  # nothing written or claimed: the same again, later
                        continue
                    if claim:
                        last_claim = now
                        backlog = len(rows) == limit
                    for row, slot in rows:
                        self._spawn(inflight, deliverer.deliver(row, slot, stop), activity)
                    if claim and backlog and len(inflight) < concurrency:
                        continue
                waiting_to_refill = backlog and busy > 0 and free > 0
                timeout = (
                    max(0.0, last_claim + REFILL_SECONDS - time.monotonic())
                    if waiting_to_refill
                    else self.settings.worker_poll_seconds
                )
                polling = not waiting_to_refill
                if first_answer is not None:
                    left = max(0.0, first_answer + OUTCOME_LINGER_SECONDS - time.monotonic())
                    if left < timeout:
                        timeout, polling = left, False
                ran_out = await _wait(activity, timeout)
                if ran_out and polling:
                    backlog = True  # a poll: retries may have come due meanwhile
        finally:
            relay.cancel()
            self._wakes.remove(activity)
            outcomes.drive(None)  # outcomes of calls still finishing commit by themselves
            await self._drain(inflight)
            await outcomes.drain()

    def _yield_until(self, last_round: float, cpu_at_round: float, now: float) -> float:
        """When the next round may start: at once, unless ingest is committing and was found
        holding the write lock lately, then ``YIELD_SECONDS`` after the last round at the
        earliest, and late enough that the CPU spent since keeps to the ingest CPU share."""
        if (
            now - self.woken_at >= YIELD_WINDOW_SECONDS
            or now - db.write_lock_contended_at(self.engine) >= YIELD_WINDOW_SECONDS
        ):
            return now
        if self.cpu_share is None:
            return last_round + YIELD_SECONDS
        spent = max(0.0, self.cpu_clock() - cpu_at_round)
        spacing = max(YIELD_SECONDS, spent / self.cpu_share)
        return last_round + min(spacing, YIELD_MAX_SECONDS)

    async def _round(
        self, deliverer: RowDeliverer[Any], limit: int
    ) -> list[tuple[Claimed, float]] | None:
        """Commit the queued outcomes and claim up to ``limit`` rows, in one transaction;
        None when the round could not be written (it is tried again later)."""
        batch = deliverer.outcomes.take()
        began = utcnow()
        try:
            changes, rows, slots = await asyncio.to_thread(
                deliverer.record_and_claim,
                [(row, outcome) for row, outcome, _ in batch],
                limit,
                deliverer.limiter,
                deliverer.outcomes.answered(batch),
            )
        except Exception as exc:
            # Whatever failed, the next round waits (doubling pauses): retrying at once spun a
            # core and hammered the database for as long as the error lasted.
            self._db_retry_at = time.monotonic() + self._db_retry
            self._db_retry = min(db.RETRY_MAX_SECONDS, self._db_retry * 2)
            if db.unavailable(exc):
                # The calls were made: their answers stay queued (their slots held) and are
                # written by a later round once the database is back, with no call repeated.
                # Failing them instead left each row leased for BRIDGE_LEASE_SECONDS and then
                # sent again.
                deliverer.outcomes.requeue(batch, began)
                log_throttled(
                    log,
                    "warning",
                    "database unavailable: answers kept in memory, trying again",
                    key="round",
                    answers=len(batch),
                    error=f"{type(exc).__name__}: {str(exc)[:200]}",
                )
                return None
            # Anything else is a fault in what is written: the deliveries waiting on these
            # outcomes fail (their rows come back after the lease, as when a task crashes).
            log_throttled(
                log,
                "exception",
                "recording outcomes or claiming failed; will try again",
                key=type(exc).__name__,
            )
            deliverer.outcomes.written(batch)  # settled for good: their stamps go too
            deliverer.outcomes.settle(batch, exc)
            return None
        except asyncio.CancelledError as exc:
            deliverer.outcomes.written(batch)
            deliverer.outcomes.settle(batch, exc)
            raise
        self._db_retry = db.RETRY_SECONDS
        deliverer.outcomes.written(batch)
        deliverer.outcomes.settle(batch, changes)
        return list(zip(rows, slots, strict=True))

    async def _upload_loop(self, uploader: CleverTapUploader, stop: asyncio.Event) -> None:
        """Full batches go at once; a partial batch waits ``linger`` so a burst can fill it."""
        inflight: set[asyncio.Task[object]] = set()
        wake = self._new_wake()
        concurrency = self.settings.clevertap_max_concurrency
        linger = self.settings.clevertap_linger_ms / 1000
        batch = uploader.batch_size
        last_full = False
        last_round, cpu_at_round = 0.0, self.cpu_clock()
        try:
            while not stop.is_set():
                wake.clear()
                if len(inflight) < concurrency:
                    if not last_full and linger > 0:
                        with suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), linger)
                        if stop.is_set():
                            break
                    if self.cpu_share is not None:  # the share is the whole worker's
                        now = time.monotonic()
                        later = self._yield_until(last_round, cpu_at_round, now)
                        if later > now and not await _wait(stop, later - now):
                            break  # stopped while waiting
                        last_round, cpu_at_round = time.monotonic(), self.cpu_clock()
                    try:
                        rows = await asyncio.to_thread(uploader.claim, batch)
                    except Exception as exc:
                        log_throttled(
                            log,
                            "exception",
                            "claiming uploads failed; will try again",
                            key=type(exc).__name__,
                        )
                        rows = []
                    if rows:
                        self._spawn(inflight, uploader.upload(rows))
                    last_full = len(rows) == batch
                    if last_full:
                        continue
                await self._idle(stop, wake, inflight)
        finally:
            await self._drain(inflight)

    @staticmethod
    def _spawn(
        inflight: set[asyncio.Task[object]],
        work: Coroutine[Any, Any, object],
        ended: asyncio.Event | None = None,
    ) -> None:
        task = asyncio.create_task(work)
        inflight.add(task)
        task.add_done_callback(inflight.discard)
        task.add_done_callback(_log_crash)
        if ended is not None:
            task.add_done_callback(lambda _: ended.set())

    async def _idle(
        self,
        stop: asyncio.Event,
        wake: asyncio.Event,
        inflight: set[asyncio.Task[object]],
    ) -> bool:
        """Until new work is committed, a call finishes, we stop, or the poll interval passes;
        True when the time ran out with nothing happening."""
        waiters: set[asyncio.Future[object]] = {
            asyncio.ensure_future(event.wait()) for event in (wake, stop)
        }
        if inflight:
            waiters.add(
                asyncio.ensure_future(
                    asyncio.wait(set(inflight), return_when=asyncio.FIRST_COMPLETED)
                )
            )
        try:
            done, _ = await asyncio.wait(
                waiters,
                timeout=self.settings.worker_poll_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
        return not done

    async def _drain(self, inflight: set[asyncio.Task[object]]) -> None:
        """Let calls in flight finish within the grace period; give the rest back unsent."""
        if not inflight:
            return
        grace = self.settings.shutdown_grace_seconds
        log.info("waiting for deliveries in flight", count=len(inflight), grace_seconds=grace)
        _done, pending = await asyncio.wait(set(inflight), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            log.warning("released deliveries still in flight at shutdown", count=len(pending))


def _log_crash(task: asyncio.Task[object]) -> None:
    """A delivery task must never die silently; its row comes back to be sent again."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log_throttled(
            log,
            "error",
            "delivery ended without its result written; its item comes back to be sent again "
            "(after the lease, or as a gone worker's once this one stops)",
            key=type(exc).__name__,
            error=repr(exc),
        )
