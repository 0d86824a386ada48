"""Rows written and read directly (SQLAlchemy Core on the engine): no HTTP, no parser, no writer.

Tests that are about the worker, the outbox or the admin build their rows here, so a bug in a
webhook parser breaks only the tests of that parser. One call with the defaults makes a due,
pending Mailmodo campaign trigger:

    [delivery_id] = add_deliveries(engine, "a@example.com")

The stored payloads are built by the two small functions at the top (``trigger_payload`` and
``event_payload``): they are the shapes the inbound services store today (see
``app/clevertap/service.py`` and ``app/mailmodo/service.py``), kept in this one place.
Timestamps default to ``utcnow()``, i.e. to the ``clock`` fixture when a test uses it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, cast

import orjson
from sqlalchemy import Table, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.clock import utcnow
from app.identity.models import Identity
from app.outbox.models import (
    Attempt,
    CallStatus,
    Delivery,
    Direction,
    InboundCall,
    Operation,
    Source,
    State,
    Upstream,
)
from app.system.models import UpstreamState, WorkerHeartbeat

CALLS = cast(Table, InboundCall.__table__)
DELIVERIES = cast(Table, Delivery.__table__)
ATTEMPTS = cast(Table, Attempt.__table__)
IDENTITIES = cast(Table, Identity.__table__)
HEARTBEATS = cast(Table, WorkerHeartbeat.__table__)

DEFAULT_ABORT_REASON = "Aborted by CleverTap via ctmm-bridge"

# --- payloads: what the inbound services store ------------------------------------------------


def trigger_payload(
    operation: Operation, email: str, data: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """The Mailmodo body stored for a CleverTap → Mailmodo delivery of ``operation``."""
    if operation is Operation.JOURNEY_ABORT:
        return {"email": email, "reason": extra.get("reason", DEFAULT_ABORT_REASON)}
    if operation is Operation.LIST_SYNC:
        return {
            "email": email,
            "listName": extra.get("listName", "list-1"),
            "candidates": data or {},
            "always": extra.get("always", {}),
        }
    payload: dict[str, Any] = {"email": email}
    if data:
        payload["data"] = data
    payload.update(extra)
    return payload


def event_payload(
    name: str = "MM Email Opened", data: dict[str, Any] | None = None, ts: int = 1_700_000_000
) -> dict[str, Any]:
    """The CleverTap event stored for a Mailmodo → CleverTap delivery (``event.upload``)."""
    return {"evtName": name, "evtData": data or {}, "ts": ts}


# --- writing rows ------------------------------------------------------------------------------


def add_call(
    engine: Engine,
    *,
    source: Source = Source.CLEVERTAP,
    route: str = "clevertap.campaign",
    target: str | None = "camp-1",
    status: CallStatus = CallStatus.ACCEPTED,
    received_at: datetime | None = None,
    body: str = "{}",
    **values: Any,
) -> int:
    """One inbound call as the writer stores it; ``values`` sets any other column."""
    row: dict[str, Any] = {
        "received_at": received_at or utcnow(),
        "source": source.value,
        "route": route,
        "target": target,
        "status": status.value,
        "http_status": 200,
        "body": body,
        "body_truncated": False,
        "item_count": 0,
        "skipped_count": 0,
    }
    row.update(values)
    with engine.begin() as conn:
        return int(conn.execute(CALLS.insert().returning(CALLS.c.id), [row]).scalar_one())


def add_delivery(
    engine: Engine,
    email: str | None = "a@example.com",
    *,
    operation: Operation = Operation.CAMPAIGN_TRIGGER,
    target: str | None = None,
    state: State = State.PENDING,
    payload: dict[str, Any] | str | None = None,
    data: dict[str, Any] | None = None,
    clevertap_id: str | None = None,
    call_id: int | None = None,
    next_attempt_at: datetime | None = None,
    **values: Any,
) -> int:
    """One delivery row; see ``add_deliveries``."""
    [delivery_id] = add_deliveries(
        engine,
        email,
        operation=operation,
        target=target,
        state=state,
        payload=payload,
        data=data,
        clevertap_id=clevertap_id,
        call_id=call_id,
        next_attempt_at=next_attempt_at,
        **values,
    )
    return delivery_id


def add_deliveries(
    engine: Engine,
    *emails: str | None,
    operation: Operation = Operation.CAMPAIGN_TRIGGER,
    target: str | None = None,
    state: State = State.PENDING,
    payload: dict[str, Any] | str | None = None,
    data: dict[str, Any] | None = None,
    clevertap_id: str | None = None,
    call_id: int | None = None,
    next_attempt_at: datetime | None = None,
    **values: Any,
) -> list[int]:
    """One delivery per email (``"a@example.com"`` when none is given), all of one inbound
    call, as the writer would have stored them; their ids in order.

    Upstream and direction follow ``operation``; ``target`` defaults to ``camp-1`` (the event
    name for an upload); the payload to ``trigger_payload``/``event_payload`` (with ``data``
    as the recipient's data or the event's properties). Rows are due
    one second ago unless ``next_attempt_at`` says otherwise. ``values`` sets any other column
    (``attempts``, ``deferrals``, ``lease_token``, ``leased_by``, ``reason``, ``created_at`` …).
    A call is made for them unless ``call_id`` names one.
    """
    now = utcnow()
    upload = operation is Operation.EVENT_UPLOAD
    if target is None:
        target = event_payload()["evtName"] if upload else "camp-1"
    if call_id is None:
        call_id = add_call(
            engine,
            source=Source.MAILMODO if upload else Source.CLEVERTAP,
            route="mailmodo.events" if upload else "clevertap.campaign",
            target=None if upload else target,
            received_at=values.get("created_at", now),
            item_count=len(emails) or 1,
        )
    rows = []
    for email in emails or ("a@example.com",):
        if payload is None:
            stored = (
                event_payload(target, data)
                if upload
                else trigger_payload(operation, email or "", data)
            )
        else:
            stored = payload
        row: dict[str, Any] = {
            "inbound_call_id": call_id,
            "direction": (
                Direction.MAILMODO_TO_CLEVERTAP if upload else Direction.CLEVERTAP_TO_MAILMODO
            ).value,
            "upstream": (Upstream.CLEVERTAP if upload else Upstream.MAILMODO).value,
            "operation": operation.value,
            "target": target,
            "email": email.lower() if email else None,
            "clevertap_id": clevertap_id,
            "payload": stored if isinstance(stored, str) else orjson.dumps(stored).decode(),
            "state": state.value,
            "attempts": 0,
            "deferrals": 0,
            "next_attempt_at": next_attempt_at or now - timedelta(seconds=1),
            "created_at": now,
            "updated_at": now,
            "finished_at": None if state in (State.PENDING, State.PARKED) else now,
        }
        row.update(values)
        rows.append(row)
    with engine.begin() as conn:
        return [
            int(i)
            for i in conn.execute(DELIVERIES.insert().returning(DELIVERIES.c.id), rows)
            .scalars()
            .all()
        ]


def add_events(engine: Engine, *emails: str | None, **fields: Any) -> list[int]:
    """Mailmodo → CleverTap event uploads (``MM Email Opened`` by default), one per email."""
    return add_deliveries(engine, *emails, operation=Operation.EVENT_UPLOAD, **fields)


def add_parked(
    engine: Engine, *emails: str, until: datetime | None = None, **fields: Any
) -> list[int]:
    """Event uploads parked for want of a CleverTap ID (until ``until``: 72 h from now by
    default), as ingest stores them under ``BRIDGE_UNRESOLVED_IDENTITY=park``."""
    until = until or utcnow() + timedelta(hours=72)
    return add_events(
        engine,
        *emails,
        state=State.PARKED,
        next_attempt_at=until,
        reason=f"waiting for a CleverTap ID for this email until {until.isoformat()}",
        **fields,
    )


def add_attempt(engine: Engine, delivery_id: int, number: int = 1, **values: Any) -> None:
    """One recorded attempt (a 500 answered with a retry unless ``values`` say otherwise)."""
    row: dict[str, Any] = {
        "delivery_id": delivery_id,
        "number": number,
        "started_at": utcnow(),
        "duration_ms": 12.5,
        "status_code": 500,
        "outcome": "retry",
        "error": "Mailmodo unavailable: HTTP 500",
        "response_body": '{"message": "boom"}',
        "worker_id": "test-worker",
    }
    row.update(values)
    with engine.begin() as conn:
        conn.execute(ATTEMPTS.insert(), [row])


def add_identity(
    engine: Engine, email: str, clevertap_id: str, *, source: str = "clevertap.campaign"
) -> None:
    """An email ↔ CleverTap ID pair, as if a CleverTap call had taught it (nothing released)."""
    with engine.begin() as conn:
        conn.execute(
            IDENTITIES.insert(),
            [
                {
                    "email": email.lower(),
                    "clevertap_id": clevertap_id,
                    "source": source,
                    "updated_at": utcnow(),
                }
            ],
        )


def add_heartbeat(
    engine: Engine, worker_id: str, *, beat_at: datetime | None = None, **values: Any
) -> None:
    """A worker's heartbeat row (beating now, pid 1 on ``test-host``, no pid namespace unless
    ``values`` say otherwise: ``pid``, ``pid_namespace``, ``started_at``, ``hostname``)."""
    now = utcnow()
    row: dict[str, Any] = {
        "worker_id": worker_id,
        "hostname": "test-host",
        "pid": 1,
        "started_at": beat_at or now,
        "beat_at": beat_at or now,
    }
    row.update(values)
    with engine.begin() as conn:
        conn.execute(HEARTBEATS.insert(), [row])


# --- moving rows as a worker (or time) would have ----------------------------------------------


def set_rows(engine: Engine, ids: Iterable[int], **values: Any) -> None:
    """Update deliveries' columns (``updated_at`` defaults to now)."""
    values.setdefault("updated_at", utcnow())
    with engine.begin() as conn:
        conn.execute(update(Delivery).where(Delivery.id.in_(list(ids))).values(**values))


def make_due(engine: Engine, ids: list[int] | None = None) -> None:
    """Pending rows become due now (skips the backoff wait); leases are left alone."""
    stmt = (
        update(Delivery)
        .where(Delivery.state == State.PENDING.value)
        .values(next_attempt_at=utcnow() - timedelta(seconds=1))
    )
    if ids is not None:
        stmt = stmt.where(Delivery.id.in_(ids))
    with engine.begin() as conn:
        conn.execute(stmt)


# --- reading rows ------------------------------------------------------------------------------


def get_delivery(engine: Engine, delivery_id: int) -> Delivery:
    with Session(engine) as session:
        row = session.get(Delivery, delivery_id)
        assert row is not None
        session.expunge(row)
        return row


def all_deliveries(engine: Engine) -> list[Delivery]:
    with Session(engine) as session:
        rows = list(session.scalars(select(Delivery).order_by(Delivery.id)))
        session.expunge_all()
        return rows


def attempts_of(engine: Engine, delivery_id: int) -> list[Attempt]:
    with Session(engine) as session:
        rows = list(
            session.scalars(
                select(Attempt).where(Attempt.delivery_id == delivery_id).order_by(Attempt.id)
            )
        )
        session.expunge_all()
        return rows


def all_calls(engine: Engine) -> list[InboundCall]:
    with Session(engine) as session:
        rows = list(session.scalars(select(InboundCall).order_by(InboundCall.id)))
        session.expunge_all()
        return rows


def all_identities(engine: Engine) -> dict[str, str]:
    with Session(engine) as session:
        return {i.email: i.clevertap_id for i in session.scalars(select(Identity))}


def upstream_state(engine: Engine, upstream: str) -> UpstreamState | None:
    with Session(engine) as session:
        row = session.get(UpstreamState, upstream)
        if row is not None:
            session.expunge(row)
        return row


def payload_of(row: Delivery) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(row.payload)
    return data
