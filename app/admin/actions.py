"""What an operator changes, once, for both the ``/admin`` API and the ``ctmm-bridge`` CLI:
retry or cancel one delivery, resume a paused upstream, replay or purge many.

Which states each action applies from is the state machine's (``app.outbox.transitions``);
here an action checks the request, takes the change for its edge and has the repository
apply it. Bulk changes commit every ``BATCH_SIZE`` rows so a long replay or purge never
holds the single SQLite writer for long. Refusals are ``AdminError``s.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy.engine import Engine

from app.admin import repository as repo
from app.admin.repository import DeliveryFilter
from app.admin.schemas import (
    ActionResult,
    PurgeRequest,
    PurgeResult,
    ReplayRequest,
    ReplayResult,
    ResumeResult,
)
from app.admin.service import MAX_ID, AdminError, delivery_filter, invalid, parse_duration
from app.clock import utcnow
from app.db import read_only
from app.outbox import transitions
from app.outbox.models import State, Upstream
from app.outbox.transitions import EDGES, Edge

log = structlog.get_logger(__name__)

BATCH_SIZE = 1000

#: What a bulk replay or purge takes when the request names no state.
DEFAULT_REPLAY_STATES = (State.FAILED, State.DEAD)
DEFAULT_PURGE_STATES = (State.DELIVERED, State.FAILED, State.DEAD, State.CANCELLED, State.DROPPED)

Progress = Callable[[int], None]

_CURSOR = re.compile(r"([a-z])(\d{1,19})", re.ASCII)


def _time_up(max_seconds: float | None) -> Callable[[], bool]:
    """Whether a bulk change's ``max_seconds`` (None: no limit) has run out since now."""
    if max_seconds is None:
        return lambda: False
    deadline = time.monotonic() + max_seconds
    return lambda: time.monotonic() >= deadline


def _resume(cursor: str | None, phase: str) -> int:
    """The id a bulk change goes on after (0: from the start); 422 for a cursor it never gave."""
    if cursor is None:
        return 0
    found = _CURSOR.fullmatch(cursor)
    if found is None or found[1] != phase or int(found[2]) > MAX_ID:
        raise invalid("`cursor` is not a `next_cursor` this action gave")
    return int(found[2])


# -- changing one -------------------------------------------------------------------------------


def _current_state(engine: Engine, delivery_id: int, now: datetime) -> tuple[str, bool]:
    """The state of a delivery and whether a worker is sending it right now."""
    with read_only(engine).connect() as conn:
        row = repo.get_delivery(conn, delivery_id)
    if row is None:
        raise AdminError(404, "not found", f"there is no delivery {delivery_id}")
    flying = (
        row.state == State.PENDING.value
        and row.lease_token is not None
        and row.next_attempt_at > now
    )
    return str(row.state), flying


def _in_flight_error(delivery_id: int) -> AdminError:
    return AdminError(
        409,
        "in flight",
        f"a worker is sending delivery {delivery_id} right now; look again in a moment",
    )


def _changed_meanwhile(delivery_id: int) -> AdminError:
    return AdminError(409, "changed meanwhile", f"delivery {delivery_id} changed; look again")


def retry_delivery(engine: Engine, delivery_id: int, *, force: bool = False) -> ActionResult:
    """Due now on a fresh retry schedule; a delivered item is sent again only with ``force``."""
    now = utcnow()
    state, flying = _current_state(engine, delivery_id, now)
    if flying:
        raise _in_flight_error(delivery_id)
    if state == State.DELIVERED.value and not force:
        raise AdminError(
            409,
            "already delivered",
            f"delivery {delivery_id} was delivered; add ?force=true (--force) to send it again",
        )
    change = transitions.retry(now, force=force)
    with engine.begin() as conn:
        done = repo.apply_one(conn, delivery_id, change)
    if not done:
        raise _changed_meanwhile(delivery_id)
    return ActionResult(
        id=delivery_id, previous_state=state, state=change.state.value, reason=change.reason
    )


def cancel_delivery(engine: Engine, delivery_id: int) -> ActionResult:
    """Only what has not finished can be cancelled: pending (not on the wire) or parked."""
    now = utcnow()
    state, flying = _current_state(engine, delivery_id, now)
    if flying:
        raise _in_flight_error(delivery_id)
    change = transitions.cancel(now)
    if state not in change.from_states:
        raise AdminError(
            409,
            "cannot cancel",
            f"delivery {delivery_id} is {state}; only pending or parked items can be cancelled",
        )
    with engine.begin() as conn:
        done = repo.apply_one(conn, delivery_id, change)
    if not done:
        raise _changed_meanwhile(delivery_id)
    return ActionResult(
        id=delivery_id, previous_state=state, state=change.state.value, reason=change.reason
    )


def resume_upstream(engine: Engine, upstream: Upstream) -> ResumeResult:
    with engine.begin() as conn:
        resumed = repo.resume_upstream(conn, upstream.value, utcnow())
    if resumed:
        # The pause was logged when it began; its end is logged too, whoever ends it.
        log.warning(
            "upstream resumed by an operator; held items are due now", upstream=upstream.value
        )
    detail = (
        f"deliveries to {upstream.value} resume now"
        if resumed
        else f"deliveries to {upstream.value} were not paused"
    )
    return ResumeResult(upstream=upstream.value, resumed=resumed, detail=detail)


# -- changing many ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    filter: DeliveryFilter
    matched: int


def plan_replay(engine: Engine, request: ReplayRequest) -> ReplayPlan:
    """Check the request and count what it matches, without changing anything."""
    f = delivery_filter(request, default_states=DEFAULT_REPLAY_STATES)
    if request.states is None and not f.has_time_range:
        raise invalid(
            "say which items to replay: give states or a time range (CLI: --state, --since, "
            "--until; API: states, updated_after, created_after, …); an empty filter would "
            "replay every failed and dead item"
        )
    replayable = EDGES[Edge.REPLAY].from_states
    refused = sorted({s for s in f.states if State(s) not in replayable})
    if refused:
        raise invalid(
            f"{', '.join(refused)} items are not replayed in bulk; retry one with "
            "POST /admin/deliveries/{id}/retry?force=true"
        )
    if not f.states:
        raise invalid("`states` must not be empty")
    with read_only(engine).connect() as conn:
        matched = repo.count_deliveries(conn, f)
    return ReplayPlan(f, matched)


def run_replay(
    engine: Engine,
    plan: ReplayPlan,
    *,
    progress: Progress | None = None,
    cursor: str | None = None,
    max_seconds: float | None = None,
) -> ReplayResult:
    """Replay batch after batch; with ``max_seconds``, stop after the batch that used it up and
    say where to go on (``next_cursor``, given back as ``cursor``)."""
    matched = replayed = 0
    after_id = _resume(cursor, "r")
    time_up = _time_up(max_seconds)
    while True:
        with engine.begin() as conn:
            seen, changed, last = repo.replay_batch(
                conn,
                plan.filter,
                transitions.replay(utcnow()),
                after_id=after_id,
                limit=BATCH_SIZE,
            )
        if last is None:
            break
        matched += seen
        replayed += changed
        after_id = last
        if progress is not None:
            progress(seen)
        if seen < BATCH_SIZE:
            break
        if time_up():
            return ReplayResult(
                matched=matched,
                replayed=replayed,
                dry_run=False,
                complete=False,
                next_cursor=f"r{after_id}",
            )
    return ReplayResult(matched=matched, replayed=replayed, dry_run=False)


def replay(
    engine: Engine, request: ReplayRequest, *, progress: Progress | None = None
) -> ReplayResult:
    """Make matching items due now on a fresh schedule (attempts back to 0)."""
    _resume(request.cursor, "r")  # a cursor it never gave is refused, dry run or not
    plan = plan_replay(engine, request)
    if request.dry_run:
        return ReplayResult(matched=plan.matched, replayed=0, dry_run=True)
    return run_replay(
        engine, plan, progress=progress, cursor=request.cursor, max_seconds=request.max_seconds
    )


@dataclass(frozen=True, slots=True)
class PurgePlan:
    filter: DeliveryFilter
    cutoff: datetime
    standalone_calls: bool
    matched: int
    calls: int


def plan_purge(engine: Engine, request: PurgeRequest) -> PurgePlan:
    cutoff = utcnow() - parse_duration(request.older_than)
    f = delivery_filter(request, default_states=DEFAULT_PURGE_STATES)
    if not f.states:
        raise invalid("`states` must not be empty")
    purgeable = EDGES[Edge.PURGE].from_states
    refused = sorted({s for s in f.states if State(s) not in purgeable})
    if refused:
        raise invalid(f"{', '.join(refused)} items may be on their way; cancel them before purging")
    standalone = request.include_calls and not f.narrows_deliveries
    with read_only(engine).connect() as conn:
        matched = repo.count_purgeable(conn, f, cutoff)
        calls = repo.count_calls_orphaned_by(conn, f, cutoff)
        if standalone:
            calls += repo.count_standalone_calls(conn, cutoff)
    return PurgePlan(f, cutoff, standalone, matched, calls)


def run_purge(
    engine: Engine,
    plan: PurgePlan,
    *,
    progress: Progress | None = None,
    cursor: str | None = None,
    max_seconds: float | None = None,
) -> PurgeResult:
    """Deliveries first (cursor ``d<id>``), then the calls left alone (``c``); with
    ``max_seconds``, stop after the batch that used it up and say where to go on."""
    deleted = calls = 0
    time_up = _time_up(max_seconds)

    def stopped(next_cursor: str) -> PurgeResult | None:
        if not time_up():
            return None
        return PurgeResult(
            matched=plan.matched,
            deleted=deleted,
            calls_deleted=calls,
            cutoff=plan.cutoff,
            dry_run=False,
            complete=False,
            next_cursor=next_cursor,
        )

    calls_phase = cursor == "c"
    after_id = 0 if calls_phase else _resume(cursor, "d")
    change = transitions.purge()
    while not calls_phase:
        with engine.begin() as conn:
            n, c, last = repo.purge_batch(
                conn, plan.filter, change, cutoff=plan.cutoff, after_id=after_id, limit=BATCH_SIZE
            )
        if last is None:
            break
        deleted += n
        calls += c
        after_id = last
        if progress is not None:
            progress(n + c)
        if (result := stopped(f"d{after_id}")) is not None:
            return result
    while plan.standalone_calls:
        with engine.begin() as conn:
            c = repo.purge_standalone_calls_batch(conn, cutoff=plan.cutoff, limit=BATCH_SIZE)
        if not c:
            break
        calls += c
        if progress is not None:
            progress(c)
        if c < BATCH_SIZE:
            break
        if (result := stopped("c")) is not None:
            return result
    return PurgeResult(
        matched=plan.matched,
        deleted=deleted,
        calls_deleted=calls,
        cutoff=plan.cutoff,
        dry_run=False,
    )


def purge(
    engine: Engine, request: PurgeRequest, *, progress: Progress | None = None
) -> PurgeResult:
    """Delete finished items older than the cut, in batches, and calls left without any."""
    if request.cursor != "c":
        _resume(request.cursor, "d")  # a cursor it never gave is refused, dry run or not
    plan = plan_purge(engine, request)
    if request.dry_run:
        return PurgeResult(
            matched=plan.matched,
            deleted=0,
            calls_deleted=plan.calls,
            cutoff=plan.cutoff,
            dry_run=True,
        )
    return run_purge(
        engine, plan, progress=progress, cursor=request.cursor, max_seconds=request.max_seconds
    )
