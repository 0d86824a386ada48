"""What the admin API answers and accepts; pydantic so that OpenAPI describes every field."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.outbox.models import Direction, Operation, State, Upstream


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ErrorBody(BaseModel):
    """Every refusal: a short phrase and what to do about it."""

    error: str
    detail: Any = None


class DeliveryItem(_Out):
    """One outbox row, without its payload."""

    id: int
    inbound_call_id: int | None
    direction: str
    upstream: str
    operation: str
    target: str | None
    email: str | None
    clevertap_id: str | None
    state: str
    attempts: int = Field(description="Attempts used on the current retry schedule")
    deferrals: int = Field(description="Rate-limit and paused-upstream deferrals (no attempt)")
    next_attempt_at: datetime
    leased_by: str | None
    last_status_code: int | None
    reason: str | None
    upstream_ref: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class DeliveryPage(BaseModel):
    items: list[DeliveryItem]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next (older) page; null on the last page"
    )


class DeliveryFull(DeliveryItem):
    payload: Any = Field(description="The JSON body sent upstream")


class InboundCallItem(_Out):
    """The HTTP call a delivery came from, as it arrived."""

    id: int
    source: str
    route: str
    target: str | None
    received_at: datetime
    status: str
    http_status: int
    reason: str | None
    request_id: str | None
    content_type: str | None
    body: str
    body_truncated: bool
    item_count: int
    skipped_count: int


class AttemptItem(_Out):
    number: int
    started_at: datetime
    status_code: int | None
    outcome: str
    duration_ms: float
    error: str | None
    response_body: str | None = Field(description="The first 2 KB of the answer")
    worker_id: str | None


class UpstreamRequest(BaseModel):
    """What the bridge sends upstream for this delivery (credentials left out)."""

    upstream: str
    method: str
    path: str = Field(description="Path on the upstream's API base URL")
    body: Any
    note: str | None = Field(default=None, description="Where the real call differs")


class DeliveryDetail(BaseModel):
    delivery: DeliveryFull
    inbound_call: InboundCallItem | None
    attempts: list[AttemptItem]
    reason: str | None = Field(description="Why the delivery is in its current state")
    upstream_request: UpstreamRequest | None = Field(
        default=None, description="The request the bridge sends upstream for it"
    )


class ActionResult(BaseModel):
    id: int
    previous_state: str
    state: str
    reason: str | None


class Filters(BaseModel):
    """The same filters as ``GET /admin/deliveries``; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    direction: Direction | None = None
    upstream: Upstream | None = None
    states: list[State] | None = Field(default=None, description="Default depends on the action")
    email: str | None = None
    target: str | None = Field(default=None, description="Campaign/journey id or event name")
    operation: Operation | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    updated_after: datetime | None = Field(
        default=None, description="Last changed at or after (for a dead item: when it died)"
    )
    updated_before: datetime | None = None
    status_code: int | None = Field(
        default=None, ge=0, le=999, description="Last HTTP status; 0 = no answer (timeout, network)"
    )
    reason: str | None = Field(
        default=None, description="The exact current reason; an empty string = no reason"
    )
    dry_run: bool = False


#: How long one bulk replay or purge call over the API works before it answers (and says where
#: to go on): under the usual 30-60 s client and proxy timeouts, however many rows match.
DEFAULT_BULK_SECONDS = 20.0


class Bounded(BaseModel):
    """A bulk change over the API answers within ``max_seconds``: a change of 100,000 rows on a
    busy PostgreSQL outlasts a client's timeout, and an answer nobody reads says nothing.
    What is left is done by sending the same body again with the answer's ``next_cursor``."""

    max_seconds: float = Field(
        default=DEFAULT_BULK_SECONDS,
        gt=0,
        le=600,
        description="Answer after about this long (batches of 1,000 rows are never cut); when "
        "the answer says `complete: false`, send the same body with `cursor` set to its "
        "`next_cursor` to go on",
    )
    cursor: str | None = Field(
        default=None,
        max_length=32,
        description="The `next_cursor` of the previous answer: go on where it stopped",
    )


class ReplayRequest(Filters, Bounded):
    """States default to failed and dead; give `states` or a time range (never neither)."""


_COMPLETE = Field(default=True, description="False when `max_seconds` ran out before the end")
_NEXT = Field(default=None, description="Send the same body with this `cursor` to go on")


class ReplayResult(BaseModel):
    matched: int
    replayed: int
    dry_run: bool
    complete: bool = _COMPLETE
    next_cursor: str | None = _NEXT


class PurgeRequest(Filters, Bounded):
    """States default to delivered, failed, dead, cancelled and dropped."""

    older_than: str = Field(
        description="Age of the last change, e.g. `30d`, `12h`, `90m`, `3600s`",
        examples=["30d"],
    )
    include_calls: bool = Field(
        default=True,
        description="Also delete inbound calls that have no delivery (rejected, duplicate, "
        "test) older than the cut; only when the purge is not narrowed to some deliveries",
    )


class PurgeResult(BaseModel):
    matched: int
    deleted: int
    calls_deleted: int
    cutoff: datetime
    dry_run: bool
    complete: bool = _COMPLETE
    next_cursor: str | None = _NEXT


class RejectedItem(_Out):
    id: int
    source: str
    route: str
    target: str | None
    received_at: datetime
    http_status: int
    reason: str | None
    content_type: str | None
    request_id: str | None
    body: str = Field(description="The body as kept, cut to 2000 characters here")
    body_truncated: bool


class RejectedPage(BaseModel):
    items: list[RejectedItem]
    next_cursor: str | None


class Rates(BaseModel):
    last_5_minutes: float = Field(description="Delivered per minute over the last 5 minutes")
    last_60_minutes: float = Field(description="Delivered per minute over the last hour")


class ParkedStats(BaseModel):
    count: int
    distinct_emails: int


class UpstreamStatus(BaseModel):
    paused: bool
    reason: str | None = None
    since: datetime | None = None
    next_probe_at: datetime | None = None


class WorkerBeat(BaseModel):
    worker_id: str
    hostname: str
    pid: int
    started_at: datetime
    last_beat_at: datetime
    age_seconds: float

    @classmethod
    def of(cls, beat: Any, now: datetime) -> WorkerBeat:
        """From a ``worker_heartbeats`` row (``repository.heartbeats``), aged at ``now``."""
        return cls(
            worker_id=beat.worker_id,
            hostname=beat.hostname,
            pid=beat.pid,
            started_at=beat.started_at,
            last_beat_at=beat.beat_at,
            age_seconds=round(max(0.0, (now - beat.beat_at).total_seconds()), 3),
        )


COUNTED_AT = (
    "When the counts were taken (`counts`, `totals`, `deliveries_per_minute` and `parked` here; "
    "`lanes[].received` and `lanes[].states` in the overview): the bridge recounts off the "
    "request path once they are older than BRIDGE_COUNTS_MAX_AGE_SECONDS, and answers with "
    "the counts it has meanwhile. Everything else is read at `generated_at`."
)


class Stats(BaseModel):
    generated_at: datetime
    counted_at: datetime = Field(description=COUNTED_AT)
    counts_age_seconds: float = Field(description="How old the counts were at `generated_at`")
    counts: dict[str, dict[str, int]] = Field(description="direction → state → deliveries")
    totals: dict[str, int] = Field(description="state → deliveries, every direction")
    oldest_pending_age_seconds: float | None
    deliveries_per_minute: Rates
    parked: ParkedStats
    upstreams: dict[str, UpstreamStatus]
    workers: list[WorkerBeat]


class ResumeResult(BaseModel):
    upstream: str
    resumed: bool
    detail: str


# -- the console's reads: overview, failures grouped, a person ------------------------------------


class Lane(BaseModel):
    """One direction and the upstream it delivers to (the registry maps one to the other)."""

    direction: str
    upstream: str
    received: int = Field(description="Deliveries held for this upstream, in every state")
    states: dict[str, int] = Field(description="state → deliveries")
    oldest_pending_age_seconds: float | None
    delivered_last_hour: int
    paused: UpstreamStatus


class PerMinute(BaseModel):
    """Finished deliveries per minute over the last hour, oldest minute first."""

    since: datetime = Field(description="Start of the first minute")
    minutes: int = Field(description="Number of one-minute buckets (60)")
    delivered: dict[str, list[int]] = Field(description="upstream → delivered per minute")
    failed: dict[str, list[int]] = Field(
        description="upstream → items that became failed or dead per minute"
    )


class Overview(BaseModel):
    generated_at: datetime
    counted_at: datetime = Field(description=COUNTED_AT)
    counts_age_seconds: float = Field(description="How old the counts were at `generated_at`")
    lanes: list[Lane]
    per_minute: PerMinute
    rejected_calls: int = Field(description="Refused inbound calls held")
    workers: list[WorkerBeat]


class FailureGroup(BaseModel):
    """Failed or dead deliveries that share upstream, last status code and reason."""

    upstream: str
    status_code: int | None = Field(description="Last HTTP status; null when no answer came")
    reason: str | None
    count: int
    failed: int
    dead: int
    first_seen: datetime = Field(description="Earliest time one of them got there")
    last_seen: datetime = Field(description="Latest time one of them got there")
    replay: ReplayRequest = Field(description="The `POST /admin/replay` body for this group")


class FailureGroups(BaseModel):
    groups: list[FailureGroup]
    next_offset: int | None = Field(description="Pass as `offset` for the next page")


class IdentityItem(_Out):
    email: str
    clevertap_id: str
    source: str
    updated_at: datetime = Field(
        description="When the pair was last learnt or changed; a repeat of the same pair "
        "moves it at most once an hour (app.identity.repository.REFRESH_HOURS)"
    )


class PersonRejected(BaseModel):
    items: list[RejectedItem]
    searched: int = Field(description="How many of the newest rejected calls were searched")


class Person(BaseModel):
    """Everything held about one email: its identity, its deliveries, refused calls naming it."""

    email: str
    identity: IdentityItem | None = Field(description="The CleverTap ID learnt for the email")
    counts: dict[str, dict[str, int]] = Field(description="direction → state → deliveries")
    deliveries: DeliveryPage = Field(description="Newest first; page on with /admin/deliveries")
    rejected: PersonRejected
