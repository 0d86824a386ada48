"""Consent from CleverTap (``/clevertap/consent/...``) and the echo guard both ways."""

from __future__ import annotations

import pytest

from app.consent import repository as consent_repo
from app.outbox.models import State
from tests.conftest import CT_AUTH, profiles_body
from tests.consent.conftest import Loop

A = "ann@example.com"
UNSUB = "/clevertap/consent/unsubscribe"
RESUB = "/clevertap/consent/resubscribe"


async def test_an_opt_out_in_clevertap_reaches_mailmodo_once_per_recipient(loop: Loop) -> None:
    ids = await loop.post(UNSUB, A, "bob@example.com")
    assert len(ids) == 2
    # CleverTap retries the same call: a duplicate, nothing more is sent.
    again = await loop.client.post(UNSUB, json=profiles_body(A, "bob@example.com"), headers=CT_AUTH)
    assert again.json()["duplicates"] == 2
    await loop.work()
    assert sorted(loop.mm_writes, key=str) == [
        ("/api/v1/contacts/unsubscribe", {"email": A}),
        ("/api/v1/contacts/unsubscribe", {"email": "bob@example.com"}),
    ]
    [entry] = loop.log(A)
    assert (entry.state, entry.source, entry.echo) == ("unsubscribed", "clevertap.webhook", False)
    assert entry.told.startswith("mailmodo: unsubscribe")
    # A later, different call for the same person: already carried, not sent again.
    await loop.post(UNSUB, A, key_values={"other": "call"})
    await loop.work()
    assert len(loop.mm_writes) == 2
    skipped = [r for r in loop.rows("contact.unsubscribe") if r.state is State.DROPPED]
    assert len(skipped) == 1
    assert "already unsubscribed in Mailmodo" in (skipped[0].reason or "")


async def test_a_resubscribe_in_clevertap_reaches_mailmodo(loop: Loop) -> None:
    await loop.post(UNSUB, A)
    await loop.work()
    await loop.post(RESUB, A)
    await loop.work()
    assert [path for path, _ in loop.mm_writes] == [
        "/api/v1/contacts/unsubscribe",
        "/api/v1/contacts/resubscribe",
    ]
    # Opting out again after opting in is carried again.
    await loop.post(UNSUB, A, key_values={"n": "3"})
    await loop.work()
    assert len(loop.mm_writes) == 3


async def test_the_same_opt_out_after_an_opt_in_is_a_new_opt_out(loop: Loop) -> None:
    """CleverTap's bodies carry no time: an opt-out byte for byte like one answered within the
    dedup window is a retry, unless the person opted in since (in CleverTap, or in Mailmodo as a
    status read learnt). Then it is a new opt-out, carried again; its own retries are duplicates."""
    await loop.post(UNSUB, A, "bob@example.com")
    await loop.work()
    loop.clock.advance(60)
    await loop.post(RESUB, A)
    await loop.work()
    loop.clock.advance(60)
    again = await loop.client.post(UNSUB, json=profiles_body(A, "bob@example.com"), headers=CT_AUTH)
    assert again.json()["accepted"] == 2
    assert again.json()["duplicates"] == 0
    retry = await loop.client.post(UNSUB, json=profiles_body(A, "bob@example.com"), headers=CT_AUTH)
    assert retry.json()["duplicates"] == 2
    await loop.work()
    assert [(path, body["email"]) for path, body in loop.mm_writes] == [
        ("/api/v1/contacts/unsubscribe", A),
        ("/api/v1/contacts/unsubscribe", "bob@example.com"),
        ("/api/v1/contacts/resubscribe", A),
        ("/api/v1/contacts/unsubscribe", A),
    ]  # bob never opted in: his repeat is finished unsent by the worker, as any repeat

    # Opted in again in Mailmodo (a status read learnt it): the same body is new again.
    loop.clock.advance(60)
    with loop.engine.begin() as conn:
        consent_repo.learn_mailmodo_state(conn, A, "subscribed", None, loop.clock.now())
    loop.clock.advance(60)
    third = await loop.client.post(UNSUB, json=profiles_body(A, "bob@example.com"), headers=CT_AUTH)
    assert third.json()["accepted"] == 2


async def test_a_retry_with_the_same_idempotency_key_stays_a_retry(loop: Loop) -> None:
    """The sender names the call it retries: an opt-out retried with its Idempotency-Key after
    an opt-in is that same opt-out, never a new one (it must not undo the opt-in)."""
    headers = CT_AUTH | {"Idempotency-Key": "opt-out-42"}
    first = await loop.client.post(UNSUB, json=profiles_body(A), headers=headers)
    assert first.json()["accepted"] == 1
    loop.clock.advance(60)
    await loop.post(RESUB, A)
    loop.clock.advance(60)
    retry = await loop.client.post(UNSUB, json=profiles_body(A), headers=headers)
    assert retry.json()["duplicates"] == 1


async def test_the_same_opt_in_after_an_opt_out_stays_a_duplicate(loop: Loop) -> None:
    """The other way round the window holds: a late retry of an opt-in must never undo a later
    opt-out, so an opt-in repeated byte for byte within the window is a duplicate (a body that
    differs, or an Idempotency-Key, gets through)."""
    await loop.post(RESUB, A)
    loop.clock.advance(60)
    await loop.post(UNSUB, A)
    loop.clock.advance(60)
    again = await loop.client.post(RESUB, json=profiles_body(A), headers=CT_AUTH)
    assert again.json()["duplicates"] == 1


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({}, profiles_body(A), 401),
        (CT_AUTH, {"unknown": "shape"}, 422),
        (CT_AUTH, "not json", 400),
    ],
)
async def test_consent_routes_answer_bad_input_like_the_other_routes(
    loop: Loop, headers: dict[str, str], body: object, status: int
) -> None:
    for path in (UNSUB, RESUB):
        if isinstance(body, str):
            resp = await loop.client.post(path, content=body, headers=headers)
        else:
            resp = await loop.client.post(path, json=body, headers=headers)
        assert resp.status_code == status
        assert set(resp.json()) >= {"error"}
    assert loop.rows() == []


async def test_the_test_call_is_answered_and_not_forwarded(loop: Loop) -> None:
    body = {"is_test": True, "targetId": 1, "profiles": [{"Email": "User@user.com"}]}
    resp = await loop.client.post(UNSUB, json=body, headers=CT_AUTH)
    assert resp.status_code == 200
    assert resp.json()["test"] is True
    assert loop.rows() == []


async def test_custom_body_with_one_recipient(loop: Loop) -> None:
    resp = await loop.client.post(UNSUB, json={"email": A, "clevertap_id": "__x"}, headers=CT_AUTH)
    assert resp.status_code == 200, resp.text
    [row] = loop.rows()
    assert (row.operation, row.email, row.target) == ("contact.unsubscribe", A, None)


# --- no loops -------------------------------------------------------------------------------


async def test_clevertap_echoing_our_opt_out_is_not_sent_back(loop: Loop) -> None:
    """Mailmodo unsubscribed A -> MSG-email false -> CleverTap raises Channel Unsubscribed."""
    await loop.send(A)
    loop.contact(A, unsubscribed=True, blocked=False)
    await loop.later(1)
    assert len(loop.profiles()) == 1
    await loop.post(UNSUB, A)  # the Channel Unsubscribed campaign calls us
    await loop.work()
    assert [p for p, _ in loop.mm_writes] == ["/api/v1/triggerCampaign/camp-1"]
    [row] = loop.rows("contact.unsubscribe")
    assert row.state is State.DROPPED
    assert "echo" in (row.reason or "")
    entries = loop.log(A)
    assert [(e.source, e.echo) for e in entries] == [
        ("mailmodo.read", False),
        ("clevertap.webhook", True),
    ]
    assert entries[1].told.startswith("nobody: echo")


async def test_mailmodo_echoing_our_opt_out_is_not_sent_back(loop: Loop) -> None:
    """CleverTap opt-out -> Mailmodo unsubscribe -> the next read sees unsubscribed."""
    await loop.post(UNSUB, A)
    await loop.work()
    await loop.send(A)
    loop.contact(A, unsubscribed=True, unsubscribeReason="API", blocked=False)
    await loop.later(1)
    assert loop.events() == []
    assert loop.profiles() == []
    entries = loop.log(A)
    assert [(e.source, e.echo) for e in entries] == [
        ("clevertap.webhook", False),
        ("mailmodo.read", True),
    ]


async def test_an_opt_out_after_opting_in_again_in_mailmodo_is_no_echo(loop: Loop) -> None:
    """Mailmodo unsubscribed A (carried into CleverTap); A subscribed again in Mailmodo, which
    a read sees; A then opts out in CleverTap: the person's own opt-out, carried to Mailmodo
    (it was dropped as an echo of the first, and Mailmodo went on mailing)."""
    await loop.send(A)
    loop.contact(A, unsubscribed=True, blocked=False)
    await loop.later(1)
    assert len(loop.profiles()) == 1  # MSG-email false
    loop.contact(A, unsubscribed=False, blocked=False)
    await loop.later(24)  # the 24 h read: subscribed again
    await loop.post(UNSUB, A)
    await loop.work()
    assert [p for p, _ in loop.mm_writes] == [
        "/api/v1/triggerCampaign/camp-1",
        "/api/v1/contacts/unsubscribe",
    ]
    [row] = loop.rows("contact.unsubscribe")
    assert row.state is State.DELIVERED
    assert not loop.log(A)[-1].echo


async def test_unsubscribing_again_in_mailmodo_after_opting_in_is_reported(loop: Loop) -> None:
    """A read saw A subscribed; A opted out in CleverTap (the bridge unsubscribed A in
    Mailmodo); A subscribed again in Mailmodo, then unsubscribed there: reported to CleverTap,
    not taken for the echo of the bridge's own unsubscribe."""
    loop.contact(A, unsubscribed=False, blocked=False)
    await loop.send(A)
    await loop.later(1)  # learnt: subscribed
    await loop.post(UNSUB, A)
    await loop.work()  # the bridge unsubscribes A in Mailmodo
    loop.contact(A, unsubscribed=False, blocked=False)
    await loop.later(24)  # subscribed again
    loop.contact(A, unsubscribed=True, unsubscribeReason="Clicked unsubscribe link", blocked=False)
    await loop.later(48)  # the 72 h read: unsubscribed by the person
    assert [e["evtName"] for e in loop.events()] == ["MM Email Unsubscribed"]
    assert len(loop.profiles()) == 1  # MSG-email false
    entries = loop.log(A)
    assert entries[-1].source == "mailmodo.read"
    assert not entries[-1].echo


async def test_sends_and_syncs_never_resubscribe(loop: Loop) -> None:
    """Only /consent/resubscribe calls Mailmodo's resubscribe: a trigger after an opt-out
    is a plain trigger."""
    await loop.post(UNSUB, A)
    await loop.work()
    await loop.send(A)
    await loop.post("/clevertap/lists/l-1/contacts", A)
    loop.mailmodo.post("/api/v1/addToList").respond(200, json={"success": True})
    await loop.work()
    paths = [p for p, _ in loop.mm_writes]
    assert "/api/v1/contacts/resubscribe" not in paths
    for _, body in loop.mm_writes:
        assert not {"unsubscribed", "blocked", "resubscribe"} & set(body)


async def test_a_callback_echoing_our_opt_out_is_not_sent_to_clevertap(loop: Loop) -> None:
    from tests.worker.conftest_upload import post_mm

    await loop.post(UNSUB, A)
    await loop.work()
    await post_mm(loop.client, {"event": "unsubscribed", "email": A, "clevertap_id": "__a"})
    await loop.work()
    assert loop.profiles() == []
    [row] = loop.rows("consent.profile")
    assert row.state is State.DROPPED
    assert loop.log(A)[-1].echo
