"""The cluster-wide CleverTap upload slots (advisory locks on PostgreSQL): never more holders
than slots across engines (as across processes), a slot frees when its holder's session dies,
waiting gives up in time, and SQLite lets every upload through. The same limit with real
worker processes: ``tests/test_scale_out.py``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from app.worker.semaphore import ClusterSlots, LocalSlots, build_upload_slots, lock_key


@pytest.fixture
def pg_engine(postgres_server: str) -> Iterator[Engine]:
    engine = create_engine(postgres_server)
    yield engine
    engine.dispose()


def test_lock_keys_are_stable_signed_32_bit() -> None:
    key = lock_key("clevertap-upload:ACC")
    assert key == lock_key("clevertap-upload:ACC")
    assert key != lock_key("clevertap-upload:OTHER")
    assert -(2**31) <= key < 2**31


async def test_sqlite_uploads_are_limited_by_the_runner_alone(tmp_path: object) -> None:
    engine = create_engine("sqlite://")
    slots = build_upload_slots(engine, "ACC", 1)
    assert isinstance(slots, LocalSlots)
    async with slots.hold(0) as first, slots.hold(0) as second:
        assert first
        assert second


@pytest.mark.postgres
async def test_no_more_holders_than_slots_across_engines(pg_engine: Engine) -> None:
    # Two engines stand for two worker processes: the limit is the server's, not a process's.
    a = ClusterSlots(pg_engine, "test-slots", 2, poll_seconds=0.01)
    b = ClusterSlots(pg_engine, "test-slots", 2, poll_seconds=0.01)
    try:
        async with a.hold(1) as one, b.hold(1) as two:
            assert one
            assert two
            async with b.hold(0.1) as third:
                assert not third  # both slots are held: gave up after the wait
            # another name (another CleverTap account) has slots of its own
            other = ClusterSlots(pg_engine, "test-slots-other", 2)
            async with other.hold(0) as elsewhere:
                assert elsewhere
            other.close()
        async with b.hold(0) as again:
            assert again  # given back on leaving
    finally:
        a.close()
        b.close()


@pytest.mark.postgres
async def test_a_waiter_gets_the_slot_when_it_is_given_back(pg_engine: Engine) -> None:
    a = ClusterSlots(pg_engine, "test-wait", 1, poll_seconds=0.01)
    b = ClusterSlots(pg_engine, "test-wait", 1, poll_seconds=0.01)
    order: list[str] = []

    async def holder() -> None:
        async with a.hold(1) as held:
            assert held
            order.append("a in")
            await asyncio.sleep(0.3)
            order.append("a out")

    async def waiter() -> None:
        await asyncio.sleep(0.05)
        async with b.hold(5) as held:
            assert held
            order.append("b in")

    try:
        await asyncio.gather(holder(), waiter())
    finally:
        a.close()
        b.close()
    assert order == ["a in", "a out", "b in"]


@pytest.mark.postgres
async def test_a_dead_holder_frees_its_slot_at_once(pg_engine: Engine) -> None:
    """kill -9 of a worker closes its sessions; PostgreSQL drops their locks with them."""
    dead = ClusterSlots(pg_engine, "test-dead", 1)
    taken = dead._take()
    assert taken is not None
    live = ClusterSlots(pg_engine, "test-dead", 1)
    try:
        async with live.hold(0) as held:
            assert not held
        taken[0].invalidate()  # the session ends without unlocking, as a crash would
        async with live.hold(2) as held:
            assert held
    finally:
        dead.close()
        live.close()
