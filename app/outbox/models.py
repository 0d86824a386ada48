"""The durable store: inbound calls, the outbox of deliveries, and every attempt made."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Boolean, Enum, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Base, BigIntPK, UTCDateTime
from app.upstream import AttemptOutcome as AttemptOutcome  # defined with Outcome


class Source(StrEnum):
    CLEVERTAP = "clevertap"
    MAILMODO = "mailmodo"


class CallStatus(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    TEST = "test"


class Direction(StrEnum):
    CLEVERTAP_TO_MAILMODO = "clevertap_to_mailmodo"
    MAILMODO_TO_CLEVERTAP = "mailmodo_to_clevertap"
    CLEVERTAP_TO_MAILMOJO = "clevertap_to_mailmojo"


class Upstream(StrEnum):
    MAILMODO = "mailmodo"
    CLEVERTAP = "clevertap"
    MAILMOJO = "mailmojo"


class Operation(StrEnum):
    CAMPAIGN_TRIGGER = "campaign.trigger"
    JOURNEY_START = "journey.start"
    JOURNEY_ABORT = "journey.abort"
    LIST_SYNC = "list.sync"
    EVENT_UPLOAD = "event.upload"
    MAILMOJO_SYNC = "mailmojo.list.sync"
    #: Consent (``app.consent``): a scheduled read of a contact's Mailmodo status, an opt-out
    #: or opt-in carried into Mailmodo, and an opt-out carried into CleverTap as a profile
    #: record (``MSG-email``) or through its subscribe API.
    CONTACT_STATUS = "contact.status"
    CONTACT_UNSUBSCRIBE = "contact.unsubscribe"
    CONTACT_RESUBSCRIBE = "contact.resubscribe"
    CONSENT_PROFILE = "consent.profile"
    CONSENT_SUBSCRIBE = "consent.subscribe"


class State(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    DEAD = "dead"
    PARKED = "parked"
    DROPPED = "dropped"
    CANCELLED = "cancelled"


#: The rows of ``ix_deliveries_due_sends``: written out as SQL so that a query spelling the
#: same terms (``claim_repository``) is proven to match it by SQLite and PostgreSQL alike.
SENDS_INDEX = "ix_deliveries_due_sends"
SENDS_PREDICATE = "state = 'pending' AND upstream = 'mailmodo' AND operation <> 'contact.status'"


#: The state column: the enum's values in a VARCHAR(16), as the migrations created it (no
#: native enum, no CHECK constraint), so a new state needs no schema change. Rows read back
#: as ``State`` members; only ``app.outbox.transitions`` decides what is written.
STATE_TYPE = Enum(
    State,
    native_enum=False,
    create_constraint=False,
    length=16,
    values_callable=lambda states: [s.value for s in states],
    validate_strings=True,
)


class InboundCall(Base):
    """One HTTP call as it arrived: kept before the 2xx, or kept rejected for the operator."""

    __tablename__ = "inbound_calls"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    source: Mapped[str] = mapped_column(String(16))
    route: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16))
    http_status: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    dedup_key: Mapped[str | None] = mapped_column(String(300), unique=True)
    content_type: Mapped[str | None] = mapped_column(String(128))
    body: Mapped[str] = mapped_column(Text)
    body_truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    item_count: Mapped[int] = mapped_column(Integer, default=0)
    skipped_count: Mapped[int] = mapped_column(Integer, default=0)
    request_id: Mapped[str | None] = mapped_column(String(64))

    deliveries: Mapped[list[Delivery]] = relationship(back_populates="inbound_call")

    __table_args__ = (Index("ix_inbound_calls_status_received_at", "status", "received_at"),)


class Delivery(Base):
    """One unit of work for an upstream: the outbox row the workers claim, retry and finish."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    inbound_call_id: Mapped[int | None] = mapped_column(
        ForeignKey("inbound_calls.id", ondelete="CASCADE"), index=True
    )
    direction: Mapped[str] = mapped_column(String(32))
    upstream: Mapped[str] = mapped_column(String(16))
    operation: Mapped[str] = mapped_column(String(32))
    target: Mapped[str | None] = mapped_column(String(256))
    email: Mapped[str | None] = mapped_column(String(320))
    clevertap_id: Mapped[str | None] = mapped_column(String(256))
    payload: Mapped[str] = mapped_column(Text)
    state: Mapped[State] = mapped_column(STATE_TYPE)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    deferrals: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    lease_token: Mapped[str | None] = mapped_column(String(40))
    leased_by: Mapped[str | None] = mapped_column(String(128))
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    upstream_ref: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    inbound_call: Mapped[InboundCall | None] = relationship(back_populates="deliveries")
    attempt_rows: Mapped[list[Attempt]] = relationship(
        back_populates="delivery", order_by="Attempt.number", passive_deletes=True
    )

    __table_args__ = (
        # The claim query: due rows of one upstream in due order.
        Index("ix_deliveries_due", "upstream", "state", "next_attempt_at"),
        Index("ix_deliveries_email", "email"),
        # Finished per state and time (stats, retention); upstream too for the console's
        # per-minute series per upstream, read from the index alone.
        Index("ix_deliveries_state_updated_at_upstream", "state", "updated_at", "upstream"),
        # Admin listings by state, newest first: a page reads its rows off the index instead
        # of sorting every row in the state (a million pending rows when Mailmodo is down).
        Index("ix_deliveries_state_id", "state", "id"),
        # The oldest pending item per upstream (/metrics, /admin/stats) in one index look-up.
        Index(
            "ix_deliveries_pending_created",
            "upstream",
            "created_at",
            sqlite_where=text("state = 'pending'"),
            postgresql_where=text("state = 'pending'"),
        ),
        # The consent-aware claim (app.outbox.claim_repository): due Mailmodo rows other than
        # status reads, in due order, without walking past a backlog of due reads.
        Index(
            SENDS_INDEX,
            "next_attempt_at",
            sqlite_where=text(SENDS_PREDICATE),
            postgresql_where=text(SENDS_PREDICATE),
        ),
        # Releasing parked events when an identity arrives for their email.
        Index(
            "ix_deliveries_parked_email",
            "email",
            sqlite_where=text("state = 'parked'"),
            postgresql_where=text("state = 'parked'"),
        ),
        # Finding the leases of gone workers: only leased rows are in it, so it stays small.
        Index(
            "ix_deliveries_leased_by",
            "leased_by",
            sqlite_where=text("leased_by IS NOT NULL"),
            postgresql_where=text("leased_by IS NOT NULL"),
        ),
    )


class Attempt(Base):
    """One call to an upstream for one delivery, with what came back."""

    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("deliveries.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    duration_ms: Mapped[float] = mapped_column()
    status_code: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    response_body: Mapped[str | None] = mapped_column(Text)
    worker_id: Mapped[str | None] = mapped_column(String(128))

    delivery: Mapped[Delivery] = relationship(back_populates="attempt_rows")
