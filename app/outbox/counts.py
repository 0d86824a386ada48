"""The outbox counts that ``/metrics``, ``/admin/stats`` and the console's overview show: one
snapshot per process, counted off the request path and refreshed stale-while-revalidate.

**Why a snapshot, not counters kept on write.** Counting is linear in the rows counted, even
off an index (``app.outbox.count_repository``): ~50 ms per million rows on SQLite, ~300 ms on
PostgreSQL, per request, and a Mailmodo outage leaves millions. Exact counters updated in the
same transactions as every state change would make a read O(1), but every path that moves a row
(ingest, claims, outcomes one by one and in batches, parking and its release, lease recovery,
retention, the operator's replay, cancel and purge, migrations, a DBA's hand edit) would have
to keep them right forever, or they drift and need a reconcile that is this same count; and
they would add a write to the ingest, claim and outcome transactions (the throughput the bridge
is measured on) on rows every replica updates (a hot row on PostgreSQL unless sharded). A
snapshot costs the writers nothing and cannot drift (each is a fresh count); its price is that
the counts are seconds old, so every answer says when they were taken (``counted_at``,
``counts_age_seconds``, ``ctmm_bridge_outbox_counts_age_seconds``).

**How it behaves** (``CountsSnapshot``):

* the first count starts in a background thread when the app starts;
* a read answers at once with the snapshot it has; when that is older than
  ``BRIDGE_COUNTS_MAX_AGE_SECONDS`` the read also starts a recount in a thread (at most one in
  flight per process) and still answers with the old counts: the next read gets the new ones.
  So counts are at most max age + one count old while reads are frequent, else as old as the
  time since the previous read (a Prometheus scrape interval). A count that takes longer than
  max age/4 is followed by a pause 4 times as long as it took, so counting a huge outbox
  never keeps the database busy more than a fifth of the time;
* only before the first count exists does a read wait, for that count (start-up);
* a count that fails keeps the previous snapshot, is logged (throttled) and is tried again by a
  read after the same pause; only with no snapshot at all does a read fail
  (``CountsUnavailable``: ``/admin/stats`` answers 503, ``/metrics`` leaves the counts out);
* max age 0: no snapshot, every read counts (exact and linear in rows, as the CLI's ``stats``
  does): for small outboxes that want exact numbers, and the test suite.

Ages come from ``app.clock.utcnow`` (tests move them with the ManualClock); how long a count
took is measured with ``time.perf_counter``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy.engine import Engine

from app.clock import utcnow
from app.db import read_only
from app.errors import short_error
from app.logging import log_throttled
from app.outbox import count_repository
from app.outbox.models import State, Upstream

log = structlog.get_logger(__name__)

#: After a count, the next waits at least this many times as long as it took (and at least max
#: age): where counting takes longer than max age, it still takes at most a fifth of the time.
IDLE_PER_COUNT = 4

#: What a failed count logs (at most once per 30 s each: ``app.logging.log_throttled``).
KEPT = "outbox count failed; answering with the previous counts"
NOT_COUNTED = "outbox count failed; no counts to answer with yet"


@dataclass(frozen=True, slots=True)
class OutboxCounts:
    """Everything shown that costs a count of rows, as of ``counted_at``."""

    counted_at: datetime
    #: Rows per (upstream, state), every pair present.
    by_upstream_state: Mapping[tuple[Upstream, State], int]
    parked_emails: int
    delivered_last_5_minutes: int
    delivered_last_60_minutes: int
    #: How long counting took (it grows with the rows held).
    seconds: float = 0.0

    def age_seconds(self, now: datetime) -> float:
        return max(0.0, (now - self.counted_at).total_seconds())

    @property
    def parked(self) -> int:
        return sum(n for (_, state), n in self.by_upstream_state.items() if state is State.PARKED)


def count_outbox(engine: Engine) -> OutboxCounts:
    """Count now: what a refresh runs off the request path, and what the CLI shows."""
    started = time.perf_counter()
    now = utcnow()
    with read_only(engine).connect() as conn:
        by_upstream_state = count_repository.counts_by_upstream_and_state(conn)
        parked_emails = count_repository.parked_emails(conn)
        last_5 = count_repository.delivered_since(conn, now - timedelta(minutes=5))
        last_60 = count_repository.delivered_since(conn, now - timedelta(minutes=60))
    return OutboxCounts(
        counted_at=now,
        by_upstream_state=by_upstream_state,
        parked_emails=parked_emails,
        delivered_last_5_minutes=last_5,
        delivered_last_60_minutes=last_60,
        seconds=time.perf_counter() - started,
    )


class CountsUnavailable(Exception):
    """No counts to show: none was taken yet and counting failed (its error is the message)."""


class CountsSnapshot:
    """The counts of one process, shared by every reader; thread-safe (readers run in the
    server's thread pool, the count in a thread of its own)."""

    def __init__(self, count: Callable[[], OutboxCounts], max_age_seconds: float) -> None:
        self._count = count
        self.max_age_seconds = max_age_seconds
        self._lock = threading.Lock()
        self._current: OutboxCounts | None = None
        self._refresh: Future[OutboxCounts] | None = None
        #: When the last count ended (successful or not), and how long until the next may start.
        self._ended_at: datetime | None = None
        self._pause = max_age_seconds
        self._closed = False
        #: The last count's error, until a count succeeds.
        self.error: str | None = None

    @property
    def live(self) -> bool:
        """Max age 0: every read counts."""
        return self.max_age_seconds <= 0

    @property
    def current(self) -> OutboxCounts | None:
        """The snapshot as it is, without starting anything."""
        return self._current

    @property
    def refreshing(self) -> bool:
        return self._refresh is not None

    def start(self) -> None:
        """Take the first snapshot in the background (nothing to do when every read counts)."""
        if self.live:
            return
        with self._lock:
            if self._current is None and self._refresh is None and not self._closed:
                self._begin()

    def get(self) -> OutboxCounts:
        """The counts, at once once a snapshot exists; starts a recount when it is stale."""
        if self.live:
            try:
                return self._count()
            except Exception as exc:
                raise CountsUnavailable(short_error(exc)) from exc
        now = utcnow()
        with self._lock:
            current, refresh = self._current, self._refresh
            if refresh is None and not self._closed and self._due(current, now):
                refresh = self._begin()
        if current is not None:
            return current
        if refresh is None:
            raise CountsUnavailable("the bridge is stopping")
        try:
            return refresh.result()
        except Exception as exc:
            raise CountsUnavailable(short_error(exc)) from exc

    def close(self, timeout: float) -> None:
        """Start no more counts; give one in flight up to ``timeout`` seconds to finish (it
        holds a connection of the engine about to be disposed)."""
        with self._lock:
            self._closed = True
            refresh = self._refresh
        if refresh is not None:
            with suppress(TimeoutError):
                refresh.exception(timeout)

    def _due(self, current: OutboxCounts | None, now: datetime) -> bool:
        """Without counts, always; else once the pause after the last count (successful or
        not) is over: max age, or 4 times that count's duration if longer. A clock stepped
        back ends it too, rather than freezing the counts."""
        if current is None or self._ended_at is None:
            return True
        return not 0 <= (now - self._ended_at).total_seconds() <= self._pause

    def _begin(self) -> Future[OutboxCounts]:
        """Start a count in a thread of its own (called with the lock held)."""
        refresh: Future[OutboxCounts] = Future()
        self._refresh = refresh
        threading.Thread(
            target=self._run, args=(refresh,), name="outbox-counts", daemon=True
        ).start()
        return refresh

    def _ended(self, started: datetime) -> None:
        """Note when the count that began at ``started`` ended (called with the lock held)."""
        self._refresh, self._ended_at = None, utcnow()
        took = max(0.0, (self._ended_at - started).total_seconds())
        self._pause = max(self.max_age_seconds, IDLE_PER_COUNT * took)

    def _run(self, refresh: Future[OutboxCounts]) -> None:
        started = utcnow()
        try:
            counts = self._count()
        except BaseException as exc:
            with self._lock:
                self._ended(started)
                self.error = short_error(exc)
                previous = self._current
            refresh.set_exception(exc)  # a reader waiting for the first count gets it
            if not isinstance(exc, Exception):
                raise
            if previous is None:
                log_throttled(log, "warning", NOT_COUNTED, error=self.error)
            else:
                log_throttled(
                    log,
                    "warning",
                    KEPT,
                    error=self.error,
                    counted_at=previous.counted_at.isoformat(),
                )
            return
        with self._lock:
            self._ended(started)
            self._current, self.error = counts, None
        refresh.set_result(counts)
