"""Process-wide state shared by every replica: generated secrets, heartbeats, pauses, rates."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Float, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime


class GeneratedSecret(Base):
    """A credential the operator did not set, generated once so every replica agrees on it."""

    __tablename__ = "generated_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WorkerHeartbeat(Base):
    """A live worker: others take its leases back once it stops beating or its process is gone."""

    __tablename__ = "worker_heartbeats"

    worker_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    #: Where ``pid`` means something (kernel boot id + pid namespace); None where unknown.
    pid_namespace: Mapped[str | None] = mapped_column(String(96))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    beat_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class UpstreamState(Base):
    """Whether deliveries to an upstream are paused (bad credentials) and until when to probe."""

    __tablename__ = "upstream_states"

    upstream: Mapped[str] = mapped_column(String(16), primary_key=True)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str | None] = mapped_column(Text)
    paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    probe_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    key_fingerprint: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RateSlot(Base):
    """A shared virtual clock per upstream: each call reserves the next free slot (GCRA)."""

    __tablename__ = "rate_slots"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    next_at: Mapped[float] = mapped_column(Float)
