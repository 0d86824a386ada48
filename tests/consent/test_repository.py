"""The read slots' SQL (``app.consent.repository``): when a send books a slot again, and
which slots fall due to be made deliveries, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from app.consent import repository as consent_repo
from app.consent.repository import SLOTS, SlotBooking

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
HOUR = 3600


def booking(email: str, slot: int, at: datetime, send: int, target: str = "c1") -> SlotBooking:
    return SlotBooking(
        email=email,
        slot_seconds=slot,
        due_at=at + timedelta(seconds=slot),
        send_delivery_id=send,
        send_operation="campaign.trigger",
        target=target,
        clevertap_id="__ct",
        sent_at=at,
    )


def book(db: Engine, at: datetime, *wanted: SlotBooking) -> None:
    with db.begin() as conn:
        consent_repo.book_slots(conn, wanted, at)


def slots(db: Engine) -> list[tuple[str, int, datetime, int | None, int | None, str | None]]:
    c = SLOTS.c
    with db.connect() as conn:
        rows = conn.execute(
            select(
                c.email, c.slot_seconds, c.due_at, c.delivery_id, c.send_delivery_id, c.target
            ).order_by(c.email, c.slot_seconds)
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


def take_up(db: Engine, now: datetime, limit: int = 100) -> list[consent_repo.DueSlot]:
    """What the claim does with due slots: read them and give each its delivery id."""
    with db.begin() as conn:
        due = consent_repo.due_slots(conn, now, limit)
        consent_repo.set_slot_deliveries(
            conn, [(s.email, s.slot_seconds, 1000 + n) for n, s in enumerate(due)]
        )
    return due


def test_a_slot_is_booked_again_only_once_its_read_is_due_and_made(db: Engine) -> None:
    book(db, T0, booking("a@x.io", HOUR, T0, send=1))
    assert slots(db) == [("a@x.io", HOUR, T0 + timedelta(hours=1), None, 1, "c1")]
    # Still ahead: a second send leaves the slot as it is.
    later = T0 + timedelta(minutes=30)
    book(db, later, booking("a@x.io", HOUR, later, send=2, target="c2"))
    assert slots(db)[0][3:] == (None, 1, "c1")
    # Due but not yet made a delivery (the reads' share is used up): still left as it is,
    # so the due read is not pushed back by the new send.
    due = T0 + timedelta(hours=2)
    book(db, due, booking("a@x.io", HOUR, due, send=3, target="c3"))
    assert slots(db)[0][3:] == (None, 1, "c1")
    # Made a delivery: the next send books the slot again, from that send.
    [taken] = take_up(db, due)
    assert (taken.send_delivery_id, taken.target, taken.sent_at) == (1, "c1", T0)
    assert slots(db)[0][3] == 1000
    book(db, due, booking("a@x.io", HOUR, due, send=4, target="c4"))
    assert slots(db) == [("a@x.io", HOUR, due + timedelta(hours=1), None, 4, "c4")]


def test_due_slots_are_the_scheduled_ones_that_fell_due_oldest_first(db: Engine) -> None:
    book(
        db,
        T0,
        booking("a@x.io", HOUR, T0, send=1),
        booking("a@x.io", 24 * HOUR, T0, send=1),
        booking("b@x.io", HOUR, T0 - timedelta(minutes=10), send=2),
    )
    now = T0 + timedelta(hours=1, seconds=1)
    with db.connect() as conn:
        assert consent_repo.due_slots(conn, now, 0) == []
        assert [s.email for s in consent_repo.due_slots(conn, now, 1)] == ["b@x.io"]
    assert [(s.email, s.slot_seconds) for s in take_up(db, now)] == [
        ("b@x.io", HOUR),
        ("a@x.io", HOUR),
    ]
    assert take_up(db, now) == []  # made deliveries: never taken up twice
    assert [s.slot_seconds for s in take_up(db, T0 + timedelta(days=2))] == [24 * HOUR]


@pytest.mark.postgres
def test_two_workers_never_take_up_the_same_slot(database_url: str, db: Engine) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("row locks are PostgreSQL's; SQLite has one writer at a time")
    book(db, T0, *(booking(f"p{i}@x.io", HOUR, T0, send=i) for i in range(4)))
    now = T0 + timedelta(hours=2)
    with db.begin() as first:
        mine = consent_repo.due_slots(first, now, 3)
        with db.begin() as second:
            theirs = consent_repo.due_slots(second, now, 3)
    assert len(mine) == 3
    assert {s.email for s in theirs} == {f"p{i}@x.io" for i in range(4)} - {s.email for s in mine}


@pytest.mark.postgres
def test_a_booking_that_waits_for_a_take_up_books_the_slot_again(
    database_url: str, db: Engine
) -> None:
    """A send delivered while another worker is making the slot's due read a delivery: the
    booking waits for that worker's row lock, then sees the slot taken up and books it again
    for the new send (not lost, not read twice)."""
    import threading

    if not database_url.startswith("postgresql"):
        pytest.skip("row locks are PostgreSQL's; SQLite has one writer at a time")
    book(db, T0, booking("a@x.io", HOUR, T0, send=1))
    now = T0 + timedelta(hours=2)
    with db.begin() as taking:
        [due] = consent_repo.due_slots(taking, now, 10)
        booker = threading.Thread(
            target=book, args=(db, now, booking("a@x.io", HOUR, now, send=2, target="c2"))
        )
        booker.start()
        booker.join(0.5)
        assert booker.is_alive()  # waiting for the taking worker's lock on the slot
        consent_repo.set_slot_deliveries(taking, [(due.email, due.slot_seconds, 1000)])
    booker.join(10)
    assert not booker.is_alive()
    assert slots(db) == [("a@x.io", HOUR, now + timedelta(hours=1), None, 2, "c2")]
