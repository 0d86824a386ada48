"""What the operator console reads beyond the admin API's lists: the overview (per direction
and upstream, with deliveries per minute over the last hour), failures grouped like issues,
and everything held about one person. Like ``app.admin.service``: functions take an
``Engine``, read through ``read_only`` and refuse with ``AdminError``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine

from app.admin import repository as repo
from app.admin.schemas import (
    DeliveryItem,
    DeliveryPage,
    FailureGroup,
    FailureGroups,
    Filters,
    IdentityItem,
    Lane,
    Overview,
    PerMinute,
    Person,
    PersonRejected,
    RejectedItem,
    ReplayRequest,
    UpstreamStatus,
    WorkerBeat,
)
from app.admin.service import (
    LISTED_BODY_CHARS,
    MAX_ID,
    MAX_LIMIT,
    counted,
    delivery_filter,
    email_filter,
    encode_cursor,
    invalid,
)
from app.clock import utcnow
from app.db import read_only
from app.outbox import count_repository
from app.outbox.counts import CountsSnapshot
from app.outbox.models import Direction, State, Upstream

MINUTES = 60
FAILED_STATES = (State.FAILED.value, State.DEAD.value)
#: A person's page searches this many of the newest rejected calls for the email.
REJECTED_SEARCHED = 5000
PERSON_DELIVERIES = 20


def overview(engine: Engine, snapshot: CountsSnapshot | None = None) -> Overview:
    """The lanes' counts from ``snapshot`` (``app.admin.service.counted``); the rest read now:
    look-ups, and series bounded by an hour of deliveries, not by the backlog."""
    outbox = counted(engine, snapshot)
    now = utcnow()
    # The first minute bucket starts on a whole minute, 59 minutes before the current one.
    current = now.replace(second=0, microsecond=0)
    since = current - timedelta(minutes=MINUTES - 1)
    with read_only(engine).connect() as conn:
        oldest = count_repository.oldest_pending_by_upstream(conn)
        minutes = repo.finished_per_minute(conn, since, (State.DELIVERED.value, *FAILED_STATES))
        paused = {r.upstream: r for r in repo.paused_upstreams(conn)}
        rejected = repo.count_rejected_calls(conn)
        beats = repo.heartbeats(conn)
    delivered: dict[str, list[int]] = {u.value: [0] * MINUTES for u in Upstream}
    failed: dict[str, list[int]] = {u.value: [0] * MINUTES for u in Upstream}
    for upstream, state, at, n in minutes:
        index = int((at - since).total_seconds() // 60)
        if 0 <= index < MINUTES and upstream in delivered:
            series = delivered if state == State.DELIVERED.value else failed
            series[upstream][index] += n
    states: dict[str, dict[str, int]] = {u.value: dict.fromkeys(State, 0) for u in Upstream}
    for (upstream, state), n in outbox.by_upstream_state.items():
        states[upstream.value][state.value] = n
    lanes = []
    for upstream in Upstream:
        pause = paused.get(upstream.value)
        first = oldest.get(upstream)
        lanes.append(
            Lane(
                direction=count_repository.DIRECTION_OF[upstream].value,
                upstream=upstream.value,
                received=sum(states[upstream.value].values()),
                states={str(s): n for s, n in states[upstream.value].items()},
                oldest_pending_age_seconds=(
                    round(max(0.0, (now - first).total_seconds()), 3) if first else None
                ),
                delivered_last_hour=sum(delivered[upstream.value]),
                paused=UpstreamStatus(
                    paused=True,
                    reason=pause.reason,
                    since=pause.paused_at,
                    next_probe_at=pause.probe_at,
                )
                if pause is not None
                else UpstreamStatus(paused=False),
            )
        )
    return Overview(
        generated_at=now,
        counted_at=outbox.counted_at,
        counts_age_seconds=round(outbox.age_seconds(now), 3),
        lanes=lanes,
        per_minute=PerMinute(since=since, minutes=MINUTES, delivered=delivered, failed=failed),
        rejected_calls=rejected,
        workers=[WorkerBeat.of(b, now) for b in beats],
    )


def failures(engine: Engine, spec: Filters, *, limit: int = 50, offset: int = 0) -> FailureGroups:
    """Groups of failed and dead items (or of ``spec.states``), each with the replay body that
    picks exactly its items (same upstream, status code, reason, states and time range)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise invalid(f"limit must be between 1 and {MAX_LIMIT}")
    if not 0 <= offset <= MAX_ID:  # past 64 bits the driver would fail on it
        raise invalid(f"offset must be between 0 and {MAX_ID}")
    f = delivery_filter(spec, default_states=[State(s) for s in FAILED_STATES])
    with read_only(engine).connect() as conn:
        rows = repo.failure_groups(conn, f, limit=limit + 1, offset=offset)
    groups = []
    for row in rows[:limit]:
        replay = ReplayRequest.model_validate(
            spec.model_dump(exclude={"dry_run"})
            | {
                "states": list(f.states),
                "upstream": row.upstream,
                "status_code": row.status_code if row.status_code is not None else 0,
                "reason": row.reason if row.reason is not None else "",
            }
        )
        groups.append(
            FailureGroup(
                upstream=row.upstream,
                status_code=row.status_code,
                reason=row.reason,
                count=row.items,
                dead=int(row.dead or 0),
                failed=row.items - int(row.dead or 0),
                first_seen=_utc(row.first_seen),
                last_seen=_utc(row.last_seen),
                replay=replay,
            )
        )
    more = len(rows) > limit
    return FailureGroups(groups=groups, next_offset=offset + limit if more else None)


def person(engine: Engine, email: str) -> Person:
    """The identity learnt for ``email``, its deliveries in both directions (counts and the
    newest page) and the rejected calls that name it."""
    email = email.strip().lower()
    if not email:
        raise invalid("give the email of the person")
    email_filter(email)
    with read_only(engine).connect() as conn:
        identity = repo.identity_of(conn, email)
        counted = repo.counts_of_email(conn, email)
        rows = repo.list_deliveries(
            conn, repo.DeliveryFilter(email=email), limit=PERSON_DELIVERIES + 1, before_id=None
        )
        rejected, searched = repo.rejected_naming(
            conn, email, newest=REJECTED_SEARCHED, limit=PERSON_DELIVERIES
        )
    counts: dict[str, dict[str, int]] = {d.value: {} for d in Direction}
    for direction, state, n in counted:
        counts.setdefault(direction, {})[state] = n
    items = [DeliveryItem.model_validate(r) for r in rows[:PERSON_DELIVERIES]]
    more = len(rows) > PERSON_DELIVERIES
    rejected_items = []
    for row in rejected:
        fields = dict(row._mapping)
        if len(fields["body"]) > LISTED_BODY_CHARS:
            fields |= {"body": fields["body"][:LISTED_BODY_CHARS], "body_truncated": True}
        rejected_items.append(RejectedItem.model_validate(fields))
    return Person(
        email=email,
        identity=IdentityItem.model_validate(identity) if identity is not None else None,
        counts=counts,
        deliveries=DeliveryPage(
            items=items, next_cursor=encode_cursor(items[-1].id) if more else None
        ),
        rejected=PersonRejected(items=rejected_items, searched=searched),
    )


def _utc(value: datetime) -> datetime:
    """Aggregates (min, max) come back as text on SQLite, outside the column's type."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
