"""What an operator reads, once, for both the ``/admin`` API and the ``ctmm-bridge`` CLI, and
how what they type is parsed. What they change (retry, cancel, replay, purge, resume) is in
``app.admin.actions``.

Functions take an ``Engine`` and open their own transactions; reads go through
``read_only`` (no SQLite write lock). Refusals are ``AdminError``s, which the API answers as
JSON and the CLI turns into an exit code.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
from sqlalchemy.engine import Engine

from app.admin import repository as repo
from app.admin.preview import upstream_request
from app.admin.repository import DeliveryFilter
from app.admin.schemas import (
    AttemptItem,
    DeliveryDetail,
    DeliveryFull,
    DeliveryItem,
    DeliveryPage,
    Filters,
    InboundCallItem,
    ParkedStats,
    Rates,
    RejectedItem,
    RejectedPage,
    Stats,
    UpstreamStatus,
    WorkerBeat,
)
from app.clock import utcnow
from app.db import read_only
from app.errors import BridgeError
from app.identity.schemas import MAX_EMAIL
from app.outbox import count_repository
from app.outbox.counts import CountsSnapshot, CountsUnavailable, OutboxCounts, count_outbox
from app.outbox.models import Direction, State, Upstream

MAX_LIMIT = 500
#: Larger ids in a path or a cursor are refused before they reach the driver.
MAX_ID = repo.MAX_ID
#: The longest duration an operator may type (a century); longer ones overflow a datetime.
MAX_DURATION = timedelta(days=36_500)
DEFAULT_LIMIT = 50
DETAIL_BODY_CHARS = 16_384
LISTED_BODY_CHARS = 2000


class AdminError(BridgeError):
    """A refusal with an HTTP status; the API answers it as JSON, the CLI maps it to an exit
    code (422, the operator's input: 2; anything else: 1)."""


def invalid(detail: Any) -> AdminError:
    return AdminError(422, "invalid request", detail)


# -- parsing what operators type ----------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE | re.ASCII)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``3600s`` (or ``2w``) as a positive ``timedelta``."""
    match = _DURATION.match(text or "")
    if not match:
        raise invalid(f"{text!r} is not a duration; write e.g. 30d, 12h, 90m or 3600s")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
    if seconds <= 0:
        raise invalid(f"{text!r}: the duration must be more than zero")
    if seconds > MAX_DURATION.total_seconds():
        raise invalid(f"{text!r}: the duration must be at most {MAX_DURATION.days} days")
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
    """In UTC; 422 for a moment that UTC cannot hold (year 1 at +23:59, year 9999 at -23:59)."""
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise invalid(f"{value.isoformat()} is out of range in UTC") from None


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
        if prefix != "id" or not value.isdigit() or int(value) > MAX_ID:
            raise ValueError(raw)
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid(f"{cursor!r} is not a cursor this API gave out") from None


#: The longest filter value compared: longer than anything stored (SQLite also refuses a
#: LIKE pattern over 50,000 bytes, which a search by email would otherwise hit).
MAX_FILTER_CHARS = 2000


def text_filter(value: str, name: str, max_chars: int = MAX_FILTER_CHARS) -> str:
    """A filter value the database can compare (PostgreSQL refuses NUL in any text)."""
    if "\x00" in value:
        raise invalid(f"{name} must not contain a NUL character")
    if len(value) > max_chars:
        raise invalid(f"{name} must be at most {max_chars} characters")
    return value


def email_filter(value: str) -> str:
    """An email to look up: no stored email is longer than ``MAX_EMAIL``."""
    return text_filter(value, "email", MAX_EMAIL)


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
        email=email_filter(spec.email.strip().lower()) if spec.email else None,
        target=text_filter(spec.target, "target") if spec.target else None,
        operation=spec.operation.value if spec.operation else None,
        created_after=_opt_utc(spec.created_after),
        created_before=_opt_utc(spec.created_before),
        updated_after=_opt_utc(spec.updated_after),
        updated_before=_opt_utc(spec.updated_before),
        status_code=spec.status_code,
        reason=text_filter(spec.reason, "reason") if spec.reason else spec.reason,
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
        upstream_request=upstream_request(row),
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


def counted(engine: Engine, snapshot: CountsSnapshot | None) -> OutboxCounts:
    """The outbox counts: the running app's snapshot (at once, possibly seconds old), or
    counted now when there is none (the CLI: one read, one process)."""
    if snapshot is None:
        return count_outbox(engine)
    try:
        return snapshot.get()
    except CountsUnavailable as exc:
        raise AdminError(
            503, "the outbox could not be counted yet", str(exc), {"Retry-After": "5"}
        ) from exc


def stats(engine: Engine, snapshot: CountsSnapshot | None = None) -> Stats:
    """Counts from ``snapshot`` (see ``counted``); the rest read now, by index look-ups."""
    outbox = counted(engine, snapshot)
    now = utcnow()
    with read_only(engine).connect() as conn:
        oldest = min(count_repository.oldest_pending_by_upstream(conn).values(), default=None)
        paused = {r.upstream: r for r in repo.paused_upstreams(conn)}
        beats = repo.heartbeats(conn)
    counts: dict[str, dict[str, int]] = {d.value: dict.fromkeys(State, 0) for d in Direction}
    totals: dict[str, int] = dict.fromkeys(State, 0)
    for (upstream, state), n in outbox.by_upstream_state.items():
        counts[count_repository.DIRECTION_OF[upstream].value][state] = n
        totals[state] += n
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
        counted_at=outbox.counted_at,
        counts_age_seconds=round(outbox.age_seconds(now), 3),
        counts={k: {str(s): n for s, n in v.items()} for k, v in counts.items()},
        totals={str(s): n for s, n in totals.items()},
        oldest_pending_age_seconds=(
            round(max(0.0, (now - oldest).total_seconds()), 3) if oldest else None
        ),
        deliveries_per_minute=Rates(
            last_5_minutes=round(outbox.delivered_last_5_minutes / 5, 3),
            last_60_minutes=round(outbox.delivered_last_60_minutes / 60, 3),
        ),
        parked=ParkedStats(count=outbox.parked, distinct_emails=outbox.parked_emails),
        upstreams=upstreams,
        workers=[WorkerBeat.of(b, now) for b in beats],
    )


# -- ctmm-bridge check --------------------------------------------------------------------------

CheckStatus = Literal["ok", "warn", "fail"]


def _json_or_text(value: str) -> Any:
    """A stored payload as JSON when it parses, else as the text it is."""
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value
