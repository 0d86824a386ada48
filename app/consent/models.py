"""What the bridge knows about a person's email consent, and what it told whom."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, BigIntPK, UTCDateTime


class ConsentState(Base):
    """Per email: the last state learnt from Mailmodo (so each change is reported once) and
    the last opt-out or opt-in the bridge carried into each system (the echo guard)."""

    __tablename__ = "consent_states"

    email: Mapped[str] = mapped_column(String(320), primary_key=True)
    #: ``subscribed``, ``unsubscribed``, ``bounced``, ``spam`` or ``blocked``.
    mailmodo_state: Mapped[str | None] = mapped_column(String(16))
    mailmodo_reason: Mapped[str | None] = mapped_column(Text)
    mailmodo_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: ``unsubscribed`` or ``subscribed``: what the bridge last told Mailmodo.
    told_mailmodo: Mapped[str | None] = mapped_column(String(16))
    told_mailmodo_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: ``unsubscribed``: the bridge set ``MSG-email`` false (or used the subscribe API).
    told_clevertap: Mapped[str | None] = mapped_column(String(16))
    told_clevertap_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ConsentLogEntry(Base):
    """One consent fact about an email: its channel, state, where it came from, when, and
    what the bridge told whom because of it (or why it told nobody)."""

    __tablename__ = "consent_log"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    channel: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    #: ``mailmodo.read``, ``mailmodo.callback`` or ``clevertap.webhook``.
    source: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    told: Mapped[str] = mapped_column(Text)
    echo: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The delivery that taught it (a status read, a callback event, a consent call).
    delivery_id: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        Index("ix_consent_log_email_at", "email", "at"),
        # Which finished consent deliveries are logged already (a worker round's look-up).
        Index("ix_consent_log_delivery_id", "delivery_id"),
    )


class StatusReadSlot(Base):
    """The next status read of an email in one slot of the schedule: a send while that read
    is still ahead adds no other read (one read per contact per slot, however many sends).

    The slot is the schedule: its read becomes an outbox delivery only when it falls due
    (``Consent.claim_mailmodo``), so a delivered send writes one small row per slot instead
    of a delivery row with all its indexes (bench/RESULTS.md, session 8), and the outbox
    holds no reads due days from now.
    """

    __tablename__ = "status_read_slots"

    email: Mapped[str] = mapped_column(String(320), primary_key=True)
    #: The slot's offset after a send, in seconds (``BRIDGE_RECONCILE_SCHEDULE_HOURS``).
    slot_seconds: Mapped[int] = mapped_column(Integer, primary_key=True)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: The read delivery once the slot fell due (no foreign key: retention deletes delivered
    #: reads); None while the read is still only scheduled.
    delivery_id: Mapped[int | None] = mapped_column(Integer)
    #: The send that booked the slot: the read's delivery is made from it.
    send_delivery_id: Mapped[int | None] = mapped_column(Integer)
    send_operation: Mapped[str | None] = mapped_column(String(32))
    target: Mapped[str | None] = mapped_column(String(256))
    clevertap_id: Mapped[str | None] = mapped_column(String(256))
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        # The slots whose read is due and not yet an outbox delivery, in due order.
        Index(
            "ix_status_read_slots_scheduled",
            "due_at",
            sqlite_where=text("delivery_id IS NULL"),
            postgresql_where=text("delivery_id IS NULL"),
        ),
    )
