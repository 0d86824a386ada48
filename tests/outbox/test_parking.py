"""Parked Mailmodo events (no CleverTap ID yet): expiry to dead after BRIDGE_PARK_TTL_HOURS,
release when the identity arrives in a concurrent transaction, and the worker's housekeeping
doing both on its own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
import respx
from sqlalchemy.orm import Session

from app.clock import utcnow
from app.identity.models import Identity
from app.outbox import repository, transitions
from app.outbox.models import State
from app.state import BridgeState
from tests.conftest import make_settings
from tests.worker.conftest_upload import (
    all_sent,
    close_to,
    ct_success,
    deliveries,
    delivery,
    learn_identity,
    opened,
    post_mm,
    running_app,
    set_next_attempt,
    uploader_for,
    wait_until,
)


def add_identity(state: BridgeState, email: str, clevertap_id: str) -> None:
    """An identity committed by another transaction (another replica's ingest)."""
    with Session(state.engine) as session, session.begin():
        session.add(
            Identity(email=email, clevertap_id=clevertap_id, source="test", updated_at=utcnow())
        )


async def park(client: httpx.AsyncClient, email: str, event_id: str) -> int:
    answer = await post_mm(client, opened(email, event_id=event_id))
    [delivery_id] = answer["ids"]
    return int(delivery_id)


# --- expiry ----------------------------------------------------------------------------------


async def test_parked_past_the_ttl_becomes_dead(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    old = await park(client, "old@example.com", "e1")
    young = await park(client, "young@example.com", "e2")
    due = await post_mm(client, opened("ok@example.com", clevertap_id="__ok", event_id="e3"))
    set_next_attempt(state.engine, [old, *due["ids"]], utcnow() - timedelta(minutes=1))

    now = utcnow()
    with state.engine.begin() as conn:
        expired = repository.expire_parked(conn, transitions.expire_parked(now, ttl_hours=72))
    assert expired == 1

    row = delivery(state.engine, old)
    assert row.state == State.DEAD.value
    assert row.reason == (
        "no CleverTap ID for this email arrived within 72 h (BRIDGE_PARK_TTL_HOURS)"
    )
    assert row.finished_at == now
    assert delivery(state.engine, young).state == State.PARKED.value
    # A pending row that is merely due is not touched.
    assert delivery(state.engine, due["ids"][0]).state == State.PENDING.value

    with state.engine.begin() as conn:
        assert (
            repository.expire_parked(conn, transitions.expire_parked(utcnow(), ttl_hours=72)) == 0
        )


async def test_an_expired_event_stays_dead_when_its_identity_arrives(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    old = await park(client, "late@example.com", "e1")
    set_next_attempt(state.engine, [old], utcnow() - timedelta(seconds=1))
    with state.engine.begin() as conn:
        repository.expire_parked(conn, transitions.expire_parked(utcnow(), ttl_hours=72))
    await learn_identity(client, "late@example.com")
    with state.engine.begin() as conn:
        assert repository.release_resolvable_parked(conn, transitions.release_parked(utcnow())) == 0
    row = delivery(state.engine, old)
    assert (row.state, row.clevertap_id) == (State.DEAD.value, None)


async def test_the_park_ttl_comes_from_the_setting(sqlite_url: str) -> None:
    async with running_app(make_settings(sqlite_url, park_ttl_hours=2)) as (client, state):
        before = utcnow()
        delivery_id = await park(client, "p@example.com", "e1")
        row = delivery(state.engine, delivery_id)
        assert close_to(row.next_attempt_at, before + timedelta(hours=2))
        assert row.reason is not None
        assert row.reason.endswith(row.next_attempt_at.isoformat())


# --- release when the identity arrives elsewhere ---------------------------------------------


async def test_release_resolvable_parked_picks_up_identities_from_other_transactions(
    client: httpx.AsyncClient, state: BridgeState, clevertap_api: respx.MockRouter
) -> None:
    route = clevertap_api.post("/1/upload").mock(side_effect=ct_success)
    carl = await park(client, "carl@example.com", "e1")
    carl_again = await park(client, "carl@example.com", "e2")
    other = await park(client, "other@example.com", "e3")
    add_identity(state, "carl@example.com", "__concurrent")
    # Nothing has released them yet: the identity was committed after they were parked.
    assert delivery(state.engine, carl).state == State.PARKED.value

    now = utcnow()
    with state.engine.begin() as conn:
        assert repository.release_resolvable_parked(conn, transitions.release_parked(now)) == 2
    for delivery_id in (carl, carl_again):
        row = delivery(state.engine, delivery_id)
        assert (row.state, row.clevertap_id, row.reason) == (
            State.PENDING.value,
            "__concurrent",
            None,
        )
        assert row.next_attempt_at == now
    assert delivery(state.engine, other).state == State.PARKED.value
    with state.engine.begin() as conn:
        assert repository.release_resolvable_parked(conn, transitions.release_parked(utcnow())) == 0

    async with uploader_for(state.engine, state.settings) as uploader:
        assert (await uploader.run_once()).claimed == 2
    [records] = all_sent(route)
    assert [r["objectId"] for r in records] == ["__concurrent", "__concurrent"]
    assert delivery(state.engine, carl).state == State.DELIVERED.value
    assert delivery(state.engine, other).state == State.PARKED.value


async def test_release_parked_keys_rows_by_the_id_just_learnt(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    a = await park(client, "a@example.com", "e1")
    b = await park(client, "b@example.com", "e2")
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
    assert (delivery(state.engine, a).state, delivery(state.engine, a).clevertap_id) == (
        State.PENDING.value,
        "__a",
    )
    assert delivery(state.engine, b).state == State.PARKED.value


# --- the worker's housekeeping ---------------------------------------------------------------


async def test_the_worker_releases_and_expires_parked_events_by_itself(
    sqlite_url: str, clevertap_api: respx.MockRouter
) -> None:
    route = clevertap_api.post("/1/upload").mock(side_effect=ct_success)
    settings = make_settings(sqlite_url, embedded_worker=True, clevertap_linger_ms=20)
    async with running_app(settings) as (client, state):
        waits = await park(client, "waits@example.com", "e1")
        stale = await park(client, "stale@example.com", "e2")
        set_next_attempt(state.engine, [stale], utcnow() - timedelta(seconds=1))
        add_identity(state, "waits@example.com", "__found")

        expected = {waits: State.DELIVERED.value, stale: State.DEAD.value}
        await wait_until(lambda: {d.id: d.state for d in deliveries(state.engine)} == expected)
        assert {d.id: d.state for d in deliveries(state.engine)} == expected
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
    by_call = await park(client, "Call@Example.com", "e1")
    by_table = await park(client, "table@example.com", "e2")
    expires = await park(client, "gone@example.com", "e3")
    stays = await park(client, "stays@example.com", "e4")

    # Released inside the ingest transaction of the CleverTap call that teaches the ID.
    await learn_identity(client, "call@example.com")
    row = delivery(state.engine, by_call)
    assert (row.state, row.clevertap_id, row.reason) == (State.PENDING.value, "__obj0", None)

    # Released by housekeeping when the ID was committed by another transaction.
    add_identity(state, "table@example.com", "__table")
    set_next_attempt(state.engine, [expires], utcnow() - timedelta(seconds=1))
    with state.engine.begin() as conn:
        assert repository.release_resolvable_parked(conn, transitions.release_parked(utcnow())) == 1
        assert (
            repository.expire_parked(conn, transitions.expire_parked(utcnow(), ttl_hours=72)) == 1
        )
    assert delivery(state.engine, by_table).clevertap_id == "__table"
    assert delivery(state.engine, expires).state == State.DEAD.value
    assert delivery(state.engine, stays).state == State.PARKED.value

    async with uploader_for(state.engine, state.settings) as uploader:
        assert (await uploader.run_once()).claimed == 2
    [records] = all_sent(route)
    assert sorted(r["objectId"] for r in records) == ["__obj0", "__table"]
    assert [delivery(state.engine, i).state for i in (by_call, by_table, expires, stays)] == [
        State.DELIVERED.value,
        State.DELIVERED.value,
        State.DEAD.value,
        State.PARKED.value,
    ]
