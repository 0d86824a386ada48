"""The worker loop and gone workers: at start (before its first claim) a worker takes back the
rows a crashed predecessor leased, and while its own calls hang it keeps beating, so nobody
takes its rows (the sweep itself is tested in tests/system/test_recovery.py)."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta

import httpx
import orjson
import respx

from app.clock import ManualClock
from app.outbox.models import State
from app.state import BridgeState
from app.system import recovery
from app.system.recovery import Me, Reclaimed
from tests.factories import add_deliveries, add_heartbeat, attempts_of, get_delivery
from tests.worker.conftest import DelivererFactory, any_call, mm_ok, wait_for
from tests.worker.test_runner import all_in, heartbeat, running


async def test_restarted_worker_takes_back_its_predecessors_rows_at_once(
    client: httpx.AsyncClient,
    state: BridgeState,
    make_deliverer: DelivererFactory,
    mailmodo: respx.MockRouter,
    clock: ManualClock,
) -> None:
    """As after a kill -9 and a restart in the same container: the old worker's heartbeat is
    fresh and its leases have minutes left, but its pid is now ours."""
    now = clock.now()
    add_heartbeat(
        state.engine,
        "before-restart",
        pid=os.getpid(),
        pid_namespace=recovery.pid_namespace(),
        started_at=now - timedelta(hours=1),
    )
    ids = add_deliveries(
        state.engine,
        "a@example.com",
        "b@example.com",
        leased_by="before-restart",
        lease_token="old-token",
        updated_at=now - timedelta(seconds=2),
        next_attempt_at=now + timedelta(seconds=state.settings.lease_seconds),
    )
    route = any_call(mailmodo).mock(return_value=mm_ok("after-restart"))

    async with running(state, make_deliverer("runner-1")):
        await wait_for(all_in(state, State.DELIVERED))

    assert route.call_count == 2
    for delivery_id in ids:
        row = get_delivery(state.engine, delivery_id)
        assert (row.attempts, row.upstream_ref) == (1, "after-restart")
        [attempt] = attempts_of(state.engine, delivery_id)
        assert attempt.worker_id == "runner-1"
    assert heartbeat(state, "before-restart") is None


async def test_worker_with_hanging_calls_keeps_beating_and_keeps_its_rows(
    client: httpx.AsyncClient,
    state: BridgeState,
    make_deliverer: DelivererFactory,
    mailmodo: respx.MockRouter,
    clock: ManualClock,
) -> None:
    beat = 0.05
    settings = state.settings.model_copy(update={"heartbeat_seconds": beat})
    ids = add_deliveries(state.engine, "a@example.com", "b@example.com")
    started: list[str] = []
    answer = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        started.append(orjson.loads(request.content)["email"])
        await answer.wait()
        return mm_ok("slow-but-alive")

    any_call(mailmodo).mock(side_effect=slow)
    other = Me("other-worker", pid=os.getpid() + 1, pid_namespace=None)

    async with running(state, make_deliverer("runner-1"), settings=settings):
        await wait_for(lambda: len(started) == 2)
        # Much longer than the staleness window passes while the calls hang ...
        clock.advance(60)
        jumped = clock.now()
        # ... and the heartbeat goes on meanwhile.
        await wait_for(
            lambda: (b := heartbeat(state, "runner-1")) is not None and b.beat_at >= jumped
        )
        with state.engine.begin() as conn:
            found = recovery.reclaim_from_gone_workers(
                conn, me=other, now=clock.now(), stale_after=recovery.gone_after(1.0)
            )
        assert found == Reclaimed({}, 0)
        assert all(get_delivery(state.engine, i).leased_by == "runner-1" for i in ids)
        answer.set()
        await wait_for(all_in(state, State.DELIVERED))

    for delivery_id in ids:
        row = get_delivery(state.engine, delivery_id)
        assert (row.attempts, row.upstream_ref) == (1, "slow-but-alive")
