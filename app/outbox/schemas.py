"""Plain records handed between the inbound services, the writer, the worker and the repository."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from app.outbox.models import CallStatus, Direction, Operation, Source, State, Upstream


@dataclass(slots=True)
class NewDelivery:
    """One outbox row to create; ``payload`` is the JSON body to send (already serialised)."""

    operation: Operation
    upstream: Upstream
    direction: Direction
    target: str | None
    email: str | None
    clevertap_id: str | None
    payload: str
    state: State = State.PENDING
    reason: str | None = None
    #: For pending rows: when they are first due (now).
    next_attempt_at: datetime | None = None
    #: Set on CleverTap events without a CleverTap ID: the writer looks the email up in the
    #: identity table inside the ingest transaction, and applies this policy (``park``,
    #: ``email`` or ``drop``) when it finds nothing.
    identity_policy: str | None = None
    #: When a parked row expires to dead.
    park_until: datetime | None = None


@dataclass(slots=True)
class IdentityObservation:
    email: str
    clevertap_id: str
    source: str


@dataclass(slots=True)
class IngestRecord:
    """One inbound call and everything it produces, written in one transaction."""

    source: Source
    route: str
    target: str | None
    status: CallStatus
    http_status: int
    received_at: datetime
    body: str
    content_type: str | None = None
    body_truncated: bool = False
    reason: str | None = None
    dedup_key: str | None = None
    skipped: int = 0
    request_id: str | None = None
    deliveries: list[NewDelivery] = field(default_factory=list)
    identities: list[IdentityObservation] = field(default_factory=list)


@dataclass(slots=True)
class IngestResult:
    call_id: int
    duplicate: bool
    delivery_ids: list[int]
    #: For a duplicate: what the original call skipped, so the answer repeats it.
    skipped: int = 0


@dataclass(slots=True)
class Claimed:
    """A delivery leased to one worker; ``lease_token`` guards every later write."""

    id: int
    operation: str
    target: str | None
    email: str | None
    clevertap_id: str | None
    payload: str
    attempts: int
    deferrals: int
    lease_token: str
    #: After this the row may be claimed by another worker: never start a call this late.
    leased_until: datetime | None = None
    #: The reference an earlier delivery got (a resend after ``retry --force``): an attempt
    #: that does not deliver keeps it.
    upstream_ref: str | None = None
