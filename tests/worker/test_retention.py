"""Retention: delivered items go after BRIDGE_RETENTION_DAYS; failed, dead, rejected stay."""

from __future__ import annotations

from datetime import timedelta

import httpx
from sqlalchemy import func, select, update

from app.clock import utcnow
from app.outbox.models import Attempt, Delivery, InboundCall, State
from app.state import BridgeState
from app.worker.runner import WorkerRunner
from tests.conftest import CT_AUTH, profiles_body


async def test_prunes_only_old_delivered_items(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    emails = [f"r{i}@example.com" for i in range(6)]
    r = await client.post("/clevertap/campaigns/c1", json=profiles_body(*emails), headers=CT_AUTH)
    ids = r.json()["ids"]
    await client.post("/clevertap/campaigns/c1", content=b"{", headers=CT_AUTH)  # rejected
    old = utcnow() - timedelta(days=state.settings.retention_days + 1)
    states = [State.DELIVERED, State.DELIVERED, State.FAILED, State.DEAD, State.PENDING]
    with state.engine.begin() as conn:
        for delivery_id, st in zip(ids, states, strict=False):
            conn.execute(
                update(Delivery).where(Delivery.id == delivery_id).values(state=st, updated_at=old)
            )
            conn.execute(
                Attempt.__table__.insert(),
                [
                    {
                        "delivery_id": delivery_id,
                        "number": 1,
                        "started_at": old,
                        "duration_ms": 1.0,
                        "status_code": 200,
                        "outcome": "delivered",
                    }
                ],
            )
        # the sixth is delivered but recent: it stays
        conn.execute(update(Delivery).where(Delivery.id == ids[5]).values(state=State.DELIVERED))
        conn.execute(update(InboundCall).values(received_at=old))
    runner = WorkerRunner(engine=state.engine, settings=state.settings, mailmodo=None)
    pruned = runner.prune(utcnow(), batch=1)
    assert pruned == 2
    with state.engine.connect() as conn:
        left = dict(conn.execute(select(Delivery.id, Delivery.state)).all())
        attempts = conn.execute(select(func.count()).select_from(Attempt)).scalar_one()
        calls = conn.execute(select(InboundCall.status)).scalars().all()
    assert set(left) == set(ids[2:])
    assert attempts == 3  # the pruned rows' attempts went with them
    assert "rejected" in calls  # rejected calls stay until purged
    assert "accepted" in calls  # its remaining deliveries still explain it
    assert runner.prune(utcnow()) == 0
