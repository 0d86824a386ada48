"""What an operator can do, once, for both the ``/admin`` API and the ``ctmm-bridge`` CLI.

Functions take an ``Engine`` and open their own transactions: reads go through
``read_only`` (no SQLite write lock), bulk changes commit every ``BATCH_SIZE`` rows so a long
replay or purge never holds the single SQLite writer for long. Refusals are ``AdminError``s,
which the API answers as JSON and the CLI turns into an exit code.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import Response

from app.admin import repository as repo
from app.admin.repository import DeliveryFilter
from app.admin.schemas import (
    ActionResult,
    AttemptItem,
    DeliveryDetail,
    DeliveryFull,
    DeliveryItem,
    DeliveryPage,
    Filters,
    InboundCallItem,
    ParkedStats,
    PurgeRequest,
    PurgeResult,
    Rates,
    RejectedItem,
    RejectedPage,
    ReplayRequest,
    ReplayResult,
    ResumeResult,
    Stats,
    UpstreamStatus,
    WorkerBeat,
)
from app.clock import utcnow
from app.config import Settings
from app.db import create_db_engine, read_only
from app.inbound.service import json_response
from app.outbox.models import Direction, State, Upstream
from app.system.check import shown_url as _shown_url
from app.system.check import sqlite_file_missing as _sqlite_file_missing
from app.system.migrations import current_revision, head_revision, upgrade
from app.upstream import short_error as _short_error

BATCH_SIZE = 1000
MAX_LIMIT = 500
DEFAULT_LIMIT = 50
DETAIL_BODY_CHARS = 16_384
LISTED_BODY_CHARS = 2000

DEFAULT_REPLAY_STATES = (State.FAILED, State.DEAD)
#: Delivered items are re-sent one at a time only (retry with force), never in bulk.
REPLAYABLE = frozenset(
    {State.FAILED, State.DEAD, State.CANCELLED, State.DROPPED, State.PARKED, State.PENDING}
)
CANCELLABLE = (State.PENDING, State.PARKED)
DEFAULT_PURGE_STATES = (State.DELIVERED, State.FAILED, State.DEAD, State.CANCELLED, State.DROPPED)
#: Pending items may be on the wire; cancel them first.
PURGEABLE = frozenset({*DEFAULT_PURGE_STATES, State.PARKED})

Progress = Callable[[int], None]


class AdminError(Exception):
    """A refusal with an HTTP status; the CLI maps it to an exit code."""

    def __init__(
        self, status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers

    def response(self) -> Response:
        return json_response(
            {"error": self.error, "detail": self.detail}, self.status, self.headers
        )

    def __str__(self) -> str:
        if self.detail is None:
            return self.error
        detail = self.detail if isinstance(self.detail, str) else orjson.dumps(self.detail).decode()
        return f"{self.error}: {detail}"


def invalid(detail: Any) -> AdminError:
    return AdminError(422, "invalid request", detail)


# -- parsing what operators type ----------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``3600s`` (or ``2w``) as a positive ``timedelta``."""
    match = _DURATION.match(text or "")
    if not match:
        raise invalid(f"{text!r} is not a duration; write e.g. 30d, 12h, 90m or 3600s")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
    if seconds <= 0:
        raise invalid(f"{text!r}: the duration must be more than zero")
    return timedelta(seconds=seconds)


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """A moment: a duration ago (``2h``) or an ISO 8601 time (UTC unless it says otherwise)."""
    if _DURATION.match(text):
        return (now or utcnow()) - parse_duration(text)
    try:
        return as_utc(datetime.fromisoformat(text.strip()))
    except ValueError:
        raise invalid(
            f"{text!r} is neither a duration (2h, 30m, 7d) nor an ISO 8601 time "
            "(2026-01-31T12:00:00Z)"
        ) from None


def as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _opt_utc(value: datetime | None) -> datetime | None:
    return None if value is None else as_utc(value)


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | None:
    """The id the next page starts below; the token is opaque to clients."""
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, value = raw.partition(":")
        if prefix != "id" or not value.isdigit():
            raise ValueError(raw)
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid(f"{cursor!r} is not a cursor this API gave out") from None


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise invalid(f"limit must be between 1 and {MAX_LIMIT}")
    return limit


def delivery_filter(spec: Filters, *, default_states: Sequence[State] = ()) -> DeliveryFilter:
    states = spec.states if spec.states is not None else list(default_states)
    return DeliveryFilter(
        direction=spec.direction.value if spec.direction else None,
        upstream=spec.upstream.value if spec.upstream else None,
        states=tuple(dict.fromkeys(State(s).value for s in states)),
        email=spec.email.strip().lower() if spec.email else None,
        target=spec.target or None,
        operation=spec.operation.value if spec.operation else None,
        created_after=_opt_utc(spec.created_after),
        created_before=_opt_utc(spec.created_before),
        updated_after=_opt_utc(spec.updated_after),
        updated_before=_opt_utc(spec.updated_before),
    )


# -- reading ------------------------------------------------------------------------------------


def list_deliveries(
    engine: Engine, spec: Filters, *, limit: int = DEFAULT_LIMIT, cursor: str | None = None
) -> DeliveryPage:
    f = delivery_filter(spec)
    before_id = decode_cursor(cursor)
    limit = _limit(limit)
    with read_only(engine).connect() as conn:
        rows = repo.list_deliveries(conn, f, limit=limit + 1, before_id=before_id)
    items = [DeliveryItem.model_validate(r) for r in rows[:limit]]
    more = len(rows) > limit
    return DeliveryPage(items=items, next_cursor=encode_cursor(items[-1].id) if more else None)


def delivery_detail(engine: Engine, delivery_id: int) -> DeliveryDetail:
    with read_only(engine).connect() as conn:
        row = repo.get_delivery(conn, delivery_id)
        if row is None:
            raise AdminError(404, "not found", f"there is no delivery {delivery_id}")
        call = repo.get_call(conn, row.inbound_call_id) if row.inbound_call_id else None
        attempts = repo.attempts_of(conn, delivery_id)
    fields = dict(row._mapping)
    fields["payload"] = _json_or_text(row.payload)
    call_item = None
    if call is not None:
        call_fields = dict(call._mapping)
        body: str = call_fields["body"]
        if len(body) > DETAIL_BODY_CHARS:
            call_fields |= {"body": body[:DETAIL_BODY_CHARS], "body_truncated": True}
        call_item = InboundCallItem.model_validate(call_fields)
    return DeliveryDetail(
        delivery=DeliveryFull.model_validate(fields),
        inbound_call=call_item,
        attempts=[AttemptItem.model_validate(a) for a in attempts],
        reason=row.reason,
    )


def list_rejected(
    engine: Engine,
    *,
    source: str | None = None,
    received_after: datetime | None = None,
    received_before: datetime | None = None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> RejectedPage:
    before_id = decode_cursor(cursor)
    limit = _limit(limit)
    with read_only(engine).connect() as conn:
        rows = repo.list_rejected(
            conn,
            source=source,
            received_after=_opt_utc(received_after),
            received_before=_opt_utc(received_before),
            limit=limit + 1,
            before_id=before_id,
        )
    items = []
    for row in rows[:limit]:
        fields = dict(row._mapping)
        if len(fields["body"]) > LISTED_BODY_CHARS:
            fields |= {"body": fields["body"][:LISTED_BODY_CHARS], "body_truncated": True}
        items.append(RejectedItem.model_validate(fields))
    more = len(rows) > limit
    return RejectedPage(items=items, next_cursor=encode_cursor(items[-1].id) if more else None)


def stats(engine: Engine) -> Stats:
    now = utcnow()
    with read_only(engine).connect() as conn:
        counted = repo.counts_by_direction_and_state(conn)
        oldest = repo.oldest_pending_created_at(conn)
        last5 = repo.delivered_since(conn, now - timedelta(minutes=5))
        last60 = repo.delivered_since(conn, now - timedelta(minutes=60))
        parked, parked_emails = repo.parked_counts(conn)
        paused = {r.upstream: r for r in repo.paused_upstreams(conn)}
        beats = repo.heartbeats(conn)
    counts: dict[str, dict[str, int]] = {d.value: dict.fromkeys(State, 0) for d in Direction}
    totals: dict[str, int] = dict.fromkeys(State, 0)
    for direction, state, n in counted:
        counts.setdefault(direction, {})[state] = n
        totals[state] = totals.get(state, 0) + n
    upstreams: dict[str, UpstreamStatus] = {}
    for upstream in Upstream:
        row = paused.get(upstream.value)
        upstreams[upstream.value] = (
            UpstreamStatus(
                paused=True, reason=row.reason, since=row.paused_at, next_probe_at=row.probe_at
            )
            if row is not None
            else UpstreamStatus(paused=False)
        )
    return Stats(
        generated_at=now,
        counts={k: {str(s): n for s, n in v.items()} for k, v in counts.items()},
        totals={str(s): n for s, n in totals.items()},
        oldest_pending_age_seconds=(
            round(max(0.0, (now - oldest).total_seconds()), 3) if oldest else None
        ),
        deliveries_per_minute=Rates(
            last_5_minutes=round(last5 / 5, 3), last_60_minutes=round(last60 / 60, 3)
        ),
        parked=ParkedStats(count=parked, distinct_emails=parked_emails),
        upstreams=upstreams,
        workers=[
            WorkerBeat(
                worker_id=b.worker_id,
                hostname=b.hostname,
                pid=b.pid,
                started_at=b.started_at,
                last_beat_at=b.beat_at,
                age_seconds=round(max(0.0, (now - b.beat_at).total_seconds()), 3),
            )
            for b in beats
        ],
    )


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
    allowed = [s.value for s in REPLAYABLE] + ([State.DELIVERED.value] if force else [])
    with engine.begin() as conn:
        done = repo.replay_one(conn, delivery_id, from_states=allowed, now=now)
    if not done:
        raise AdminError(409, "changed meanwhile", f"delivery {delivery_id} changed; look again")
    return ActionResult(
        id=delivery_id,
        previous_state=state,
        state=State.PENDING.value,
        reason=repo.REPLAYED_REASON,
    )


def cancel_delivery(engine: Engine, delivery_id: int) -> ActionResult:
    """Only what has not finished can be cancelled: pending (not on the wire) or parked."""
    now = utcnow()
    state, flying = _current_state(engine, delivery_id, now)
    if flying:
        raise _in_flight_error(delivery_id)
    allowed = [s.value for s in CANCELLABLE]
    if state not in allowed:
        raise AdminError(
            409,
            "cannot cancel",
            f"delivery {delivery_id} is {state}; only pending or parked items can be cancelled",
        )
    with engine.begin() as conn:
        done = repo.cancel_one(conn, delivery_id, from_states=allowed, now=now)
    if not done:
        raise AdminError(409, "changed meanwhile", f"delivery {delivery_id} changed; look again")
    return ActionResult(
        id=delivery_id,
        previous_state=state,
        state=State.CANCELLED.value,
        reason=repo.CANCELLED_REASON,
    )


def resume_upstream(engine: Engine, upstream: Upstream) -> ResumeResult:
    with engine.begin() as conn:
        resumed = repo.resume_upstream(conn, upstream.value, utcnow())
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
    refused = sorted({s for s in f.states if State(s) not in REPLAYABLE})
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
    engine: Engine, plan: ReplayPlan, *, progress: Progress | None = None
) -> ReplayResult:
    matched = replayed = 0
    after_id = 0
    while True:
        with engine.begin() as conn:
            seen, changed, last = repo.replay_batch(
                conn, plan.filter, after_id=after_id, limit=BATCH_SIZE, now=utcnow()
            )
        if last is None:
            break
        matched += seen
        replayed += changed
        after_id = last
        if progress is not None:
            progress(seen)
    return ReplayResult(matched=matched, replayed=replayed, dry_run=False)


def replay(
    engine: Engine, request: ReplayRequest, *, progress: Progress | None = None
) -> ReplayResult:
    """Make matching items due now on a fresh schedule (attempts back to 0)."""
    plan = plan_replay(engine, request)
    if request.dry_run:
        return ReplayResult(matched=plan.matched, replayed=0, dry_run=True)
    return run_replay(engine, plan, progress=progress)


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
    refused = sorted({s for s in f.states if State(s) not in PURGEABLE})
    if refused:
        raise invalid(f"{', '.join(refused)} items may be on their way; cancel them before purging")
    standalone = request.include_calls and not f.narrows_deliveries
    with read_only(engine).connect() as conn:
        matched = repo.count_purgeable(conn, f, cutoff)
        calls = repo.count_calls_orphaned_by(conn, f, cutoff)
        if standalone:
            calls += repo.count_standalone_calls(conn, cutoff)
    return PurgePlan(f, cutoff, standalone, matched, calls)


def run_purge(engine: Engine, plan: PurgePlan, *, progress: Progress | None = None) -> PurgeResult:
    deleted = calls = 0
    after_id = 0
    while True:
        with engine.begin() as conn:
            n, c, last = repo.purge_batch(
                conn, plan.filter, cutoff=plan.cutoff, after_id=after_id, limit=BATCH_SIZE
            )
        if last is None:
            break
        deleted += n
        calls += c
        after_id = last
        if progress is not None:
            progress(n + c)
    while plan.standalone_calls:
        with engine.begin() as conn:
            c = repo.purge_standalone_calls_batch(conn, cutoff=plan.cutoff, limit=BATCH_SIZE)
        if not c:
            break
        calls += c
        if progress is not None:
            progress(c)
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
    plan = plan_purge(engine, request)
    if request.dry_run:
        return PurgeResult(
            matched=plan.matched,
            deleted=0,
            calls_deleted=plan.calls,
            cutoff=plan.cutoff,
            dry_run=True,
        )
    return run_purge(engine, plan, progress=progress)


# -- text for the CLI ---------------------------------------------------------------------------


def _json_or_text(value: str) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in header], *[["-" if v is None else str(v) for v in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def format_stats(s: Stats) -> str:
    states = [st.value for st in State]
    rows = [[d, *(s.counts[d].get(st, 0) for st in states)] for d in s.counts]
    rows.append(["total", *(s.totals.get(st, 0) for st in states)])
    lines = [
        _table(["deliveries", *states], rows),
        "",
        f"oldest pending: {_ago(s.oldest_pending_age_seconds)}",
        f"delivered per minute: {s.deliveries_per_minute.last_5_minutes:g} (last 5 min), "
        f"{s.deliveries_per_minute.last_60_minutes:g} (last hour)",
        f"parked: {s.parked.count} item(s) waiting for {s.parked.distinct_emails} email(s)",
    ]
    for name, up in s.upstreams.items():
        if up.paused:
            since = up.since.isoformat() if up.since else "?"
            lines.append(f"{name}: PAUSED since {since}: {up.reason}")
        else:
            lines.append(f"{name}: not paused")
    if s.workers:
        lines += [
            "",
            _table(
                ["worker", "last beat"],
                [[w.worker_id, _ago(w.age_seconds) + " ago"] for w in s.workers],
            ),
        ]
    else:
        lines.append("workers: none has reported")
    return "\n".join(lines)


def format_page(items: Sequence[DeliveryItem]) -> str:
    return _table(
        ["id", "created", "state", "operation", "target", "email", "tries", "reason"],
        [
            [
                d.id,
                d.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                d.state,
                d.operation,
                d.target,
                d.email,
                d.attempts,
                (d.reason or "")[:60],
            ]
            for d in items
        ],
    )


def format_rejected(items: Sequence[RejectedItem]) -> str:
    return _table(
        ["id", "received", "source", "route", "target", "http", "reason"],
        [
            [
                r.id,
                r.received_at.strftime("%Y-%m-%d %H:%M:%S"),
                r.source,
                r.route,
                r.target,
                r.http_status,
                (r.reason or "")[:80],
            ]
            for r in items
        ],
    )


def format_detail(d: DeliveryDetail) -> str:
    v = d.delivery
    lines = [
        f"delivery {v.id}: {v.state}",
        f"  {v.direction}  {v.upstream} {v.operation}  target {v.target or '-'}",
        f"  email {v.email or '-'}  clevertap_id {v.clevertap_id or '-'}",
        f"  created {v.created_at.isoformat()}  updated {v.updated_at.isoformat()}"
        + (f"  finished {v.finished_at.isoformat()}" if v.finished_at else ""),
        f"  attempts {v.attempts}  deferrals {v.deferrals}  next {v.next_attempt_at.isoformat()}"
        + (f"  upstream ref {v.upstream_ref}" if v.upstream_ref else ""),
        f"  reason: {d.reason or '-'}",
        f"  payload: {orjson.dumps(v.payload).decode()}",
    ]
    if d.inbound_call is not None:
        c = d.inbound_call
        lines += [
            "",
            f"inbound call {c.id}: {c.status} (HTTP {c.http_status}) {c.route} "
            f"target {c.target or '-'} at {c.received_at.isoformat()}"
            + (f"  request {c.request_id}" if c.request_id else ""),
            f"  body{' (truncated)' if c.body_truncated else ''}: {c.body[:500]}",
        ]
    lines += ["", f"attempts ({len(d.attempts)}):"]
    if not d.attempts:
        lines.append("  none yet")
    for a in d.attempts:
        lines.append(
            f"  #{a.number} {a.started_at.isoformat()}  {a.outcome}  "
            f"HTTP {a.status_code if a.status_code is not None else '-'}  "
            f"{a.duration_ms:.0f} ms" + (f"  {a.error}" if a.error else "")
        )
        if a.response_body:
            lines.append(f"     answer: {a.response_body[:300]}")
    return "\n".join(lines)


# -- the CLI's database -------------------------------------------------------------------------


def open_database(settings: Settings) -> Engine:
    """The database named by the settings, for an operator command.

    A missing SQLite file is an error, not created empty (a wrong working directory would
    otherwise show an empty bridge); a SQLite schema behind is migrated as ``serve`` does.
    """
    shown = _shown_url(settings)
    if _sqlite_file_missing(settings):
        raise AdminError(
            404,
            "no database",
            f"{shown} does not exist; run where `serve` runs or set BRIDGE_DATABASE_URL",
        )
    engine = create_db_engine(settings)
    try:
        if current_revision(engine) != head_revision():
            if not settings.is_sqlite:
                raise AdminError(
                    503, "database not migrated", f"{shown}: run `ctmm-bridge db upgrade`"
                )
            upgrade(settings, engine)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise AdminError(503, "database unavailable", f"{shown}: {_short_error(exc)}") from None
    except AdminError:
        engine.dispose()
        raise
    return engine
