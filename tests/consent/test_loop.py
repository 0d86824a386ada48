"""The consent loop through the real app: reads booked by delivered sends, what a read
teaches (every row of the mapping), once per change, the three consent modes, callbacks."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from app.outbox.models import State
from tests.consent.conftest import SUBSCRIBED, Loop
from tests.factories import attempts_of, payload_of
from tests.worker.conftest_upload import post_mm

A = "ann@example.com"


async def test_a_delivered_send_books_one_read_per_slot(loop: Loop) -> None:
    await loop.send(A)
    [send] = loop.rows("campaign.trigger")
    assert send.state is State.DELIVERED
    sent = send.finished_at
    assert sent is not None
    # Only the slots are written; no read is an outbox delivery before it is due.
    assert loop.reads() == []
    slots = loop.slots()
    hours = [round((s.due_at - sent).total_seconds() / 3600) for s in slots]
    assert hours == [1, 24, 72]
    assert {(s.delivery_id, s.send_delivery_id, s.send_operation) for s in slots} == {
        (None, send.id, "campaign.trigger")
    }
    assert {(s.target, s.clevertap_id, s.sent_at) for s in slots} == {("camp-1", "__obj0", sent)}
    # Another send in the same window books nothing more: one read per contact per slot.
    await loop.send(A, campaign="camp-2")
    assert [(s.due_at, s.target) for s in loop.slots()] == [(s.due_at, s.target) for s in slots]
    # Due, the first slot's read becomes a delivery made of the send that booked it.
    loop.contact(A, **SUBSCRIBED)
    await loop.later(1)
    [read] = loop.reads()
    assert read.state is State.DELIVERED
    assert (read.email, read.clevertap_id, read.target, read.upstream) == (
        A,
        "__obj0",
        "camp-1",
        "mailmodo",
    )
    assert payload_of(read)["send"] == {
        "delivery_id": send.id,
        "operation": "campaign.trigger",
        "target": "camp-1",
        "sent_at": sent.isoformat(),
    }
    assert payload_of(read)["slot_hours"] == 1
    assert [s.delivery_id for s in loop.slots()] == [read.id, None, None]


async def test_a_send_after_a_slot_was_read_books_that_slot_again(loop: Loop) -> None:
    loop.contact(A, **SUBSCRIBED)
    await loop.send(A)
    await loop.later(1)
    assert len(loop.reads(State.DELIVERED)) == 1
    await loop.send(A, campaign="camp-2")
    [camp2] = loop.rows("campaign.trigger")[1:]
    slots = loop.slots()
    # The new 1 h read, and the 24 h and 72 h reads of the first send.
    assert [(s.target, s.delivery_id) for s in slots] == [
        ("camp-2", None),
        ("camp-1", None),
        ("camp-1", None),
    ]
    assert slots[0].send_delivery_id == camp2.id
    assert camp2.finished_at is not None
    assert slots[0].due_at == camp2.finished_at + timedelta(hours=1)
    await loop.later(1)
    assert [r.target for r in loop.reads(State.DELIVERED)] == ["camp-1", "camp-2"]


async def test_a_backlog_of_due_reads_becomes_deliveries_only_as_fast_as_they_are_read(
    loop: Loop, database_url: str
) -> None:
    """Slots fall due by the thousand after a big campaign; each claim makes deliveries of
    only as many as the reads' share of the rate lets it take."""
    from app.worker.build import build_mailmodo_deliverer
    from tests.conftest import make_settings

    emails = [f"p{i}@example.com" for i in range(40)]
    await loop.send(*emails)
    assert len(loop.slots()) == 120
    slow = make_settings(
        database_url, mailmodo_rate_per_second=5.0, reconcile_schedule_hours=[1.0, 24.0, 72.0]
    )
    worker = build_mailmodo_deliverer(loop.engine, slow, "w-slow")
    assert worker is not None
    try:
        loop.clock.freeze()
        loop.clock.advance(3601)
        claimed = worker.claim(100)
        # 5/s at a share of 0.2: one read a second, booked at most a second ahead.
        assert 1 <= len(claimed) <= 2
        assert {r.operation for r in claimed} == {"contact.status"}
        assert len(loop.reads()) == len(claimed)
        assert sum(s.delivery_id is None for s in loop.slots()) == 120 - len(claimed)
        assert worker.claim(100) == []  # the share is used up: nothing more is made
        assert len(loop.reads()) == len(claimed)
    finally:
        await worker.client.aclose()


async def test_a_failed_send_books_no_read(loop: Loop) -> None:
    loop.refuse.add("/api/v1/triggerCampaign/bad")
    await loop.send(A, campaign="bad")
    assert loop.rows("campaign.trigger")[0].state is State.FAILED
    assert loop.slots() == []


async def test_a_journey_start_books_reads_too(loop: Loop) -> None:
    await loop.post("/clevertap/journeys/j-1/start", A)
    await loop.work()
    assert {(s.target, s.send_operation) for s in loop.slots()} == {("j-1", "journey.start")}


# --- what a read teaches ---------------------------------------------------------------------

ROWS: list[tuple[str, dict[str, Any], str | None, dict[str, Any]]] = [
    (
        "unsubscribed",
        {
            "unsubscribed": True,
            "unsubscribeReason": "Clicked unsubscribe",
            "unsubscribedEmailTypes": ["Promotional", "Newsletter"],
            "blocked": False,
        },
        "MM Email Unsubscribed",
        {"Reason": "Clicked unsubscribe", "Unsubscribed Email Types": "Promotional, Newsletter"},
    ),
    (
        "bounce",
        {"unsubscribed": False, "blocked": True, "blockedReason": "Hard Bounce: mailbox unknown"},
        "MM Email Bounced",
        {"Reason": "Hard Bounce: mailbox unknown", "Hard Bounce": True},
    ),
    (
        "spam",
        {"unsubscribed": False, "blocked": True, "blockedReason": "Marked as spam by user"},
        "MM Email Marked as Spam",
        {"Reason": "Marked as spam by user"},
    ),
    (
        "complaint",
        {"unsubscribed": False, "blocked": True, "blockedReason": "Complaint received"},
        "MM Email Marked as Spam",
        {"Reason": "Complaint received"},
    ),
    (
        "other block",
        {"unsubscribed": False, "blocked": True, "blockedReason": "Unsubscribe Via CSV Upload"},
        "MM Email Unsubscribed",
        {"Reason": "Unsubscribe Via CSV Upload"},
    ),
    (
        "bounce beats unsubscribe",
        {
            "unsubscribed": True,
            "unsubscribeReason": "x",
            "blocked": True,
            "blockedReason": "bounced",
        },
        "MM Email Bounced",
        {"Reason": "bounced", "Hard Bounce": True},
    ),
    ("subscribed", SUBSCRIBED, None, {}),
]


@pytest.mark.parametrize(("why", "status", "event", "props"), ROWS, ids=[r[0] for r in ROWS])
async def test_every_row_of_the_mapping(
    loop: Loop, why: str, status: dict[str, Any], event: str | None, props: dict[str, Any]
) -> None:
    await loop.send(A)
    loop.contact(A, **status)
    await loop.later(1)
    events = loop.events()
    if event is None:
        assert events == []
        assert loop.profiles() == []
        [entry] = loop.log(A)
        assert (entry.state, entry.source) == ("subscribed", "mailmodo.read")
        return
    [record] = events
    assert record["evtName"] == event
    assert record["objectId"] == "__obj0"  # the send's clevertap_id
    data = record["evtData"]
    assert {k: data[k] for k in props} == props
    assert data["Campaign ID"] == "camp-1"
    assert data["Detected By"] == "status read"
    assert loop.profiles() == [
        {"type": "profile", "objectId": "__obj0", "profileData": {"MSG-email": False}}
    ]
    [entry] = loop.log(A)
    assert entry.source == "mailmodo.read"
    assert not entry.echo
    assert "MM Email" in entry.told
    assert "profile" in entry.told


async def test_each_change_is_reported_once(loop: Loop) -> None:
    await loop.send(A)
    loop.contact(A, unsubscribed=True, unsubscribeReason="r", blocked=False)
    for hours in (1, 24, 72):
        await loop.later(hours)
    assert len(loop.reads(State.DELIVERED)) == 3
    assert [e["evtName"] for e in loop.events()] == ["MM Email Unsubscribed"]
    assert len(loop.profiles()) == 1
    # Resubscribed in Mailmodo (learnt, never carried), then unsubscribed again: news again.
    await loop.send(A)
    loop.contact(A, **SUBSCRIBED)
    await loop.later(1)
    loop.contact(A, unsubscribed=True, unsubscribeReason="again", blocked=False)
    await loop.later(24)
    assert [e["evtName"] for e in loop.events()] == ["MM Email Unsubscribed"] * 2
    states = [(e.state, e.source) for e in loop.log(A)]
    assert states == [
        ("unsubscribed", "mailmodo.read"),
        ("subscribed", "mailmodo.read"),
        ("unsubscribed", "mailmodo.read"),
    ]


async def test_two_contacts_are_read_and_reported_apart(loop: Loop) -> None:
    await loop.send(A, "bob@example.com")
    loop.contact(A, unsubscribed=True, blocked=False)
    loop.contact("bob@example.com", unsubscribed=False, blocked=True, blockedReason="spam")
    await loop.later(1)
    got = {(e["objectId"], e["evtName"]) for e in loop.events()}
    assert got == {("__obj0", "MM Email Unsubscribed"), ("__obj1", "MM Email Marked as Spam")}


async def test_an_unknown_contact_teaches_nothing(loop: Loop) -> None:
    await loop.send(A)
    await loop.later(1)  # the fake answers 404 for contacts it does not have
    [read] = loop.reads(State.DELIVERED)
    assert attempts_of(loop.engine, read.id)[0].response_body == '{"known":false}'
    assert loop.events() == []
    assert loop.log(A) == []


async def test_an_unclear_answer_teaches_nothing_and_is_not_retried(loop: Loop) -> None:
    await loop.send(A)
    loop.contacts[A] = ["not", "a", "contact"]
    await loop.later(1)
    [read] = [r for r in loop.reads() if r.state is State.FAILED]
    assert read.attempts == 1
    assert "nothing learnt" in (read.reason or "")
    assert loop.events() == []


async def test_an_outage_is_retried_then_learnt(loop: Loop) -> None:
    await loop.send(A)
    route = loop.mailmodo.get("/api/v1/getContactDetails")
    route.side_effect = None
    route.respond(503, json={"message": "down"})
    await loop.later(1)
    [retrying] = [r for r in loop.reads() if r.attempts == 1]
    assert retrying.state is State.PENDING
    route.respond(200, json={"unsubscribed": True, "blocked": False})
    loop.clock.advance(30)
    await loop.work()
    assert [e["evtName"] for e in loop.events()] == ["MM Email Unsubscribed"]


# --- consent to CleverTap: the three modes, and callbacks ----------------------------------


@pytest.mark.parametrize("mode", ["profile", "subscribe_api", "off"])
async def test_the_three_consent_modes(loop: Loop, mode: str) -> None:
    loop.uploader.consent = loop.deliverer.consent = _with_mode(loop, mode)
    await loop.send(A)
    loop.contact(A, unsubscribed=True, blocked=False)
    await loop.later(1)
    assert [e["evtName"] for e in loop.events()] == ["MM Email Unsubscribed"]
    profiles, subscribes = loop.profiles(), [r for b in loop.subscribes for r in b]
    if mode == "profile":
        assert (len(profiles), subscribes) == (1, [])
    elif mode == "subscribe_api":
        assert profiles == []
        assert subscribes == [{"type": "email", "value": A, "status": "Unsubscribe"}]
    else:
        assert (profiles, subscribes) == ([], [])


def _with_mode(loop: Loop, mode: str) -> Any:
    from dataclasses import replace

    from app.config import ConsentToCleverTap

    assert loop.deliverer.consent is not None
    return replace(loop.deliverer.consent, to_clevertap=ConsentToCleverTap(mode))


@pytest.mark.parametrize(
    ("event", "extra", "carried"),
    [
        ("unsubscribed", {}, True),
        ("spam", {}, True),
        ("bounced", {"is_hard_bounce": True}, True),
        ("bounced", {"is_hard_bounce": False}, False),
        ("opened", {}, False),
    ],
)
async def test_opt_outs_arriving_as_callbacks_are_carried(
    loop: Loop, event: str, extra: dict[str, Any], carried: bool
) -> None:
    body = {"event": event, "email": A, "clevertap_id": "__cb", "ts": 1_700_000_000, **extra}
    await post_mm(loop.client, body)
    await loop.work()
    assert len(loop.events()) == 1
    assert loop.profiles() == (
        [{"type": "profile", "objectId": "__cb", "profileData": {"MSG-email": False}}]
        if carried
        else []
    )
    if carried:
        [entry] = loop.log(A)
        assert (entry.source, entry.echo) == ("mailmodo.callback", False)
        # A read that later sees the same opt-out is no news.
        await loop.send(A)
        loop.contact(
            A,
            unsubscribed=event == "unsubscribed",
            blocked=event != "unsubscribed",
            blockedReason={"spam": "spam", "bounced": "bounce"}.get(event),
        )
        await loop.later(1)
        assert len(loop.events()) == 1


async def test_an_event_without_a_known_clevertap_id_waits_like_any_event(loop: Loop) -> None:
    """A read of a send that had no CleverTap ID: the event parks until one is learnt."""
    await loop.post("/clevertap/campaigns/c", A, ObjectId=None)
    await loop.work()
    assert {s.clevertap_id for s in loop.slots()} == {None}
    loop.contact(A, unsubscribed=True, blocked=False)
    await loop.later(1)
    assert {r.clevertap_id for r in loop.reads()} == {None}
    parked = [r for r in loop.rows() if r.state is State.PARKED]
    assert {r.operation for r in parked} == {"event.upload", "consent.profile"}


async def test_reads_survive_a_restart_in_the_middle_of_the_schedule(
    loop: Loop, database_url: str
) -> None:
    """The schedule is rows: a new process finds it where the old one left it."""
    from app.worker.build import build_mailmodo_deliverer
    from tests.conftest import make_settings
    from tests.worker.conftest_upload import running_app

    await loop.send(A)
    loop.contact(A, **SUBSCRIBED)
    await loop.later(1)
    settings = make_settings(database_url, reconcile_schedule_hours=[1.0, 24.0, 72.0])
    async with running_app(settings) as (_client, state):
        deliverer = build_mailmodo_deliverer(state.engine, settings, "w-new")
        assert deliverer is not None
        loop.contact(A, unsubscribed=True, blocked=False)
        loop.clock.advance(24 * 3600)
        await deliverer.run_once(100)
        await loop.uploader.run_once()
        await deliverer.client.aclose()
    assert [e["evtName"] for e in loop.events()] == ["MM Email Unsubscribed"]
    assert [r.state for r in loop.reads()] == [State.DELIVERED, State.DELIVERED]
    [left] = [s for s in loop.slots() if s.delivery_id is None]
    assert (left.slot_seconds, left.target) == (72 * 3600, "camp-1")
    assert timedelta(0) < left.due_at - loop.clock.now()


async def test_reads_booked_before_reads_were_turned_off_still_fall_due(
    loop: Loop, database_url: str
) -> None:
    """An empty ``BRIDGE_RECONCILE_SCHEDULE_HOURS`` books no new read; reads already booked
    are still made and read when due (as when they were outbox rows from the start)."""
    from app.worker.build import build_mailmodo_deliverer
    from tests.conftest import make_settings

    await loop.send(A)
    off = make_settings(database_url, reconcile_schedule_hours=[])
    worker = build_mailmodo_deliverer(loop.engine, off, "w-off")
    assert worker is not None
    try:
        loop.contact(A, **SUBSCRIBED)
        loop.clock.advance(3601)
        await worker.run_once(100)
        assert [r.state for r in loop.reads()] == [State.DELIVERED]
        # A send delivered by this worker books nothing.
        await loop.post("/clevertap/campaigns/camp-2", "bo@example.com")
        await worker.run_once(100)
        assert {s.email for s in loop.slots()} == {A}
    finally:
        await worker.client.aclose()
