"""Parked Mailmodo events (no CleverTap ID yet): expiry to dead after BRIDGE_PARK_TTL_HOURS,
release when the identity arrives in a concurrent transaction, and the worker's housekeeping
doing both on its own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import respx

from app.clock import utcnow
from app.db import create_db_engine
from app.outbox import repository, transitions
from app.outbox.models import State
from app.state import BridgeState
from app.system.migrations import upgrade
from tests.conftest import make_settings
from tests.factories import add_events, add_identity, add_parked, all_deliveries, get_delivery
from tests.worker.conftest_upload import (
    all_sent,
    close_to,
    ct_success,
    learn_identity,
    opened,
    post_mm,
    running_app,
    uploader_for,
    wait_until,
)


def park(state: BridgeState, email: str, *, until: datetime | None = None) -> int:
    """An event parked for want of a CleverTap ID, written directly (not through ingest)."""
    [delivery_id] = add_parked(state.engine, email, until=until)
    return delivery_id


# --- expiry ----------------------------------------------------------------------------------


async def test_parked_past_the_ttl_becomes_dead(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    old = park(state, "old@example.com", until=utcnow() - timedelta(minutes=1))
    young = park(state, "young@example.com")
    [due] = add_events(state.engine, "ok@example.com", clevertap_id="__ok")

    now = utcnow()
    with state.engine.begin() as conn:
        expired = repository.expire_parked(conn, transitions.expire_parked(now, ttl_hours=72))
    assert expired == 1

    row = get_delivery(state.engine, old)
    assert row.state == State.DEAD.value
    assert row.reason == (
        "no CleverTap ID for this email arrived within 72 h (BRIDGE_PARK_TTL_HOURS)"
    )
    assert row.finished_at == now
    assert get_delivery(state.engine, young).state == State.PARKED.value
    # A pending row that is merely due is not touched.
    assert get_delivery(state.engine, due).state == State.PENDING.value

    with state.engine.begin() as conn:
        assert (
            repository.expire_parked(conn, transitions.expire_parked(utcnow(), ttl_hours=72)) == 0
        )


async def test_an_expired_event_stays_dead_when_its_identity_arrives(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    old = park(state, "late@example.com", until=utcnow() - timedelta(seconds=1))
    with state.engine.begin() as conn:
        repository.expire_parked(conn, transitions.expire_parked(utcnow(), ttl_hours=72))
    await learn_identity(client, "late@example.com")
    with state.engine.begin() as conn:
        assert repository.release_resolvable_parked(conn, transitions.release_parked(utcnow())) == 0
    row = get_delivery(state.engine, old)
    assert (row.state, row.clevertap_id) == (State.DEAD.value, None)


async def test_the_park_ttl_comes_from_the_setting(sqlite_url: str) -> None:
    async with running_app(make_settings(sqlite_url, park_ttl_hours=2)) as (client, state):
        before = utcnow()
        answer = await post_mm(client, opened("p@example.com", event_id="e1"))
        [delivery_id] = answer["ids"]
        row = get_delivery(state.engine, delivery_id)
        assert close_to(row.next_attempt_at, before + timedelta(hours=2))
        assert row.reason is not None
        assert row.reason.endswith(row.next_attempt_at.isoformat())


# --- release when the identity arrives elsewhere ---------------------------------------------


async def test_release_resolvable_parked_picks_up_identities_from_other_transactions(
    client: httpx.AsyncClient, state: BridgeState, clevertap_api: respx.MockRouter
) -> None:
    route = clevertap_api.post("/1/upload").mock(side_effect=ct_success)
    carl = park(state, "carl@example.com")
    carl_again = park(state, "carl@example.com")
    other = park(state, "other@example.com")
    add_identity(state.engine, "carl@example.com", "__concurrent")
    # Nothing has released them yet: the identity was committed after they were parked.
    assert get_delivery(state.engine, carl).state == State.PARKED.value

    now = utcnow()
    with state.engine.begin() as conn:
        assert repository.release_resolvable_parked(conn, transitions.release_parked(now)) == 2
    for delivery_id in (carl, carl_again):
        row = get_delivery(state.engine, delivery_id)
        assert (row.state, row.clevertap_id, row.reason) == (
            State.PENDING.value,
            "__concurrent",
            None,
        )
        assert row.next_attempt_at == now
    assert get_delivery(state.engine, other).state == State.PARKED.value
    with state.engine.begin() as conn:
        assert repository.release_resolvable_parked(conn, transitions.release_parked(utcnow())) == 0

    async with uploader_for(state.engine, state.settings) as uploader:
        assert (await uploader.run_once()).claimed == 2
    [records] = all_sent(route)
    assert [r["objectId"] for r in records] == ["__concurrent", "__concurrent"]
    assert get_delivery(state.engine, carl).state == State.DELIVERED.value
    assert get_delivery(state.engine, other).state == State.PARKED.value


async def test_release_parked_keys_rows_by_the_id_just_learnt(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    a = park(state, "a@example.com")
    b = park(state, "b@example.com")
    now = utcnow()
    with state.engine.begin() as conn:
        repository.release_parked(
            conn,
            [
                {"email": "a@example.com", "clevertap_id": "__a"},
                {"email": "nobody@example.com", "clevertap_id": "__n"},
            ],
            transitions.release_parked(now),
        )
    assert (get_delivery(state.engine, a).state, get_delivery(state.engine, a).clevertap_id) == (
        State.PENDING.value,
        "__a",
    )
    assert get_delivery(state.engine, b).state == State.PARKED.value


# --- the worker's housekeeping ---------------------------------------------------------------


async def test_the_worker_releases_and_expires_parked_events_by_itself(
    sqlite_url: str, clevertap_api: respx.MockRouter
) -> None:
    route = clevertap_api.post("/1/upload").mock(side_effect=ct_success)
    settings = make_settings(sqlite_url, embedded_worker=True, clevertap_linger_ms=20)
    async with running_app(settings) as (_client, state):
        waits = park(state, "waits@example.com")
        stale = park(state, "stale@example.com", until=utcnow() - timedelta(seconds=1))
        add_identity(state.engine, "waits@example.com", "__found")

        expected = {waits: State.DELIVERED.value, stale: State.DEAD.value}
        await wait_until(lambda: {d.id: d.state for d in all_deliveries(state.engine)} == expected)
        assert {d.id: d.state for d in all_deliveries(state.engine)} == expected
    [records] = all_sent(route)
    assert [(r["objectId"], r["evtName"]) for r in records] == [("__found", "MM Email Opened")]


# --- the same SQL on SQLite and PostgreSQL ---------------------------------------------------


@pytest.fixture
async def anydb(database_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, BridgeState]]:
    """The app on SQLite and on PostgreSQL (identity upsert, release, expiry and claim differ
    in dialect)."""
    async with running_app(make_settings(database_url)) as app:
        yield app


async def test_park_release_expire_and_upload_on_every_backend(
    anydb: tuple[httpx.AsyncClient, BridgeState], clevertap_api: respx.MockRouter
) -> None:
    client, state = anydb
    route = clevertap_api.post("/1/upload").mock(side_effect=ct_success)
    by_call = park(state, "Call@Example.com")
    by_table = park(state, "table@example.com")
    expires = park(state, "gone@example.com", until=utcnow() - timedelta(seconds=1))
    stays = park(state, "stays@example.com")

    # Released inside the ingest transaction of the CleverTap call that teaches the ID.
    await learn_identity(client, "call@example.com")
    row = get_delivery(state.engine, by_call)
    assert (row.state, row.clevertap_id, row.reason) == (State.PENDING.value, "__obj0", None)

    # Released by housekeeping when the ID was committed by another transaction.
    add_identity(state.engine, "table@example.com", "__table")
    with state.engine.begin() as conn:
        assert repository.release_resolvable_parked(conn, transitions.release_parked(utcnow())) == 1
        assert (
            repository.expire_parked(conn, transitions.expire_parked(utcnow(), ttl_hours=72)) == 1
        )
    assert get_delivery(state.engine, by_table).clevertap_id == "__table"
    assert get_delivery(state.engine, expires).state == State.DEAD.value
    assert get_delivery(state.engine, stays).state == State.PARKED.value

    async with uploader_for(state.engine, state.settings) as uploader:
        assert (await uploader.run_once()).claimed == 2
    [records] = all_sent(route)
    assert sorted(r["objectId"] for r in records) == ["__obj0", "__table"]
    assert [get_delivery(state.engine, i).state for i in (by_call, by_table, expires, stays)] == [
        State.DELIVERED.value,
        State.DELIVERED.value,
        State.DEAD.value,
        State.PARKED.value,
    ]


# --- the release look-up stays an index probe however many rows are parked --------------------


def _sqlite_steps(conn: Any, work: Callable[[], object]) -> int:
    """SQLite virtual-machine steps (in thousands) that ``work`` costs on ``conn``: a measure of
    rows read that no machine's speed changes."""
    driver = conn.connection.driver_connection
    steps = [0]

    def tick() -> int:
        steps[0] += 1
        return 0

    driver.set_progress_handler(tick, 1000)
    try:
        work()
    finally:
        driver.set_progress_handler(None, 1000)
    return steps[0]


def test_the_release_look_up_does_not_read_every_parked_row(sqlite_url: str) -> None:
    """Every ingest batch that learns identities asks which of their emails have parked rows.
    Written ``state = ?``, SQLite answered it from the index on (state, updated_at, upstream),
    reading every parked row, batch after batch (10 ms a batch at 27,000 parked rows)."""
    settings = make_settings(sqlite_url)
    engine = create_db_engine(settings)
    upgrade(settings, engine)
    learnt = [{"email": f"new{i}@example.com", "clevertap_id": f"__n{i}"} for i in range(16)] + [
        {"email": "waits@example.com", "clevertap_id": "__w"}
    ]

    def release_cost() -> int:
        with engine.begin() as conn:
            return _sqlite_steps(
                conn,
                lambda: repository.release_parked(
                    conn, learnt, transitions.release_parked(utcnow())
                ),
            )

    [waits] = add_parked(engine, "waits@example.com")
    few = release_cost()
    assert get_delivery(engine, waits).state == State.PENDING.value
    add_parked(engine, *(f"parked{i}@example.com" for i in range(5000)))
    add_parked(engine, "waits@example.com")
    many = release_cost()
    assert many <= few + 2, (few, many)  # thousands of steps: not one per parked row
    rows = all_deliveries(engine)
    assert sum(r.state == State.PARKED.value for r in rows) == 5000
    assert [r.clevertap_id for r in rows if r.email == "waits@example.com"] == ["__w", "__w"]
    engine.dispose()
