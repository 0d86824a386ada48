"""Imports every domain's models so that ``Base.metadata`` is complete (Alembic, tests)."""

from app.consent.models import ConsentLogEntry, ConsentState, StatusReadSlot
from app.db import Base
from app.identity.models import Identity
from app.outbox.models import Attempt, Delivery, InboundCall
from app.system.models import GeneratedSecret, RateSlot, UpstreamState, WorkerHeartbeat

__all__ = [
    "Attempt",
    "Base",
    "ConsentLogEntry",
    "ConsentState",
    "Delivery",
    "GeneratedSecret",
    "Identity",
    "InboundCall",
    "RateSlot",
    "StatusReadSlot",
    "UpstreamState",
    "WorkerHeartbeat",
]
