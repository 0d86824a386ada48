"""Deciding the one write of a sync (``app.mailmojo.bodies.decide``), including
contact-sync.md §5 byte for byte."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from app.mailmojo.bodies import Contact, SyncPlan, Write, decide, stored_payload, sync_plan
from app.recipient import Recipient

ANN = Recipient(
    "ann@example.com",
    "__ann",
    data={
        "identity": "u-42",
        "first_name": "Anna",
        "last_name": "Lee",
        "mobile": "+4790000001",
        "phone": "+4722000002",
        "tags": "vip, paying",
    },
)


def plan(recipient: Recipient = ANN, **kw: Any) -> SyncPlan:
    return SyncPlan.from_json(
        stored_payload(recipient, "42", tag_prefix=kw.get("prefix", "ct_"), tags_field="tags")
    )


def contact(
    tags: list[str] | None = None,
    lists: set[str] | None = None,
    status: str = "subscribed",
    **f: Any,
) -> Contact:
    fields = {"first_name": None, "last_name": None, "phone": None, **f}
    return Contact(fields, tags or [], None if lists is None else frozenset(lists), status)


def test_the_plan_keeps_candidates_and_wanted_tags() -> None:
    assert sync_plan(ANN, "42", tag_prefix="ct_", tags_field="Tags") == {
        "email": "ann@example.com",
        "list_id": "42",
        "candidates": {"first_name": "Anna", "last_name": "Lee", "phone": "+4790000001"},
        "tags": ["ct_paying", "ct_vip"],
        "prefix": "ct_",
    }


def test_worked_example_is_one_patch_byte_for_byte() -> None:
    existing = contact(["newsletter-2024", "ct_vip", "ct_trial"], first_name="Ann")
    write = decide(plan(), existing)
    assert write is not None
    assert write.kind == "update"
    assert orjson.dumps(write.body) == (
        b'{"email":"ann@example.com","last_name":"Lee","phone":"+4790000001",'
        b'"tags":["newsletter-2024","ct_vip","ct_paying"]}'
    )


def test_a_new_contact_gets_every_field() -> None:
    assert decide(plan(), None) == Write(
        "subscribe",
        {
            "email": "ann@example.com",
            "first_name": "Anna",
            "last_name": "Lee",
            "phone": "+4790000001",
            "tags": ["ct_paying", "ct_vip"],
        },
    )


def test_nothing_to_change_is_no_write() -> None:
    done = contact(["x", "ct_vip", "ct_paying"], {"42"}, first_name="A", last_name="L", phone="+1")
    assert decide(plan(), done) is None


@pytest.mark.parametrize("status", ["unsubscribed", "Bounced", "spam_complaint", "opted_out"])
def test_an_opted_out_contact_is_only_updated(status: str) -> None:
    write = decide(plan(), contact(lists={"7"}, status=status))
    assert write is not None
    assert write.kind == "update"
    assert "force_subscribe" not in write.body


def test_a_contact_not_on_the_list_is_subscribed_without_forcing() -> None:
    write = decide(plan(), contact(lists={"7"}))
    assert write is not None
    assert write.kind == "subscribe"
    assert write.body["force_subscribe"] is False


def test_a_contact_not_on_the_list_but_up_to_date_still_joins() -> None:
    done = contact(["ct_paying", "ct_vip"], {"7"}, first_name="A", last_name="L", phone="+1")
    assert decide(plan(), done) == Write(
        "subscribe", {"email": "ann@example.com", "force_subscribe": False}
    )


def test_the_prefix_is_the_one_stored_with_the_plan() -> None:
    write = decide(plan(prefix="mm-"), contact(["ct_old", "mm-old"]))
    assert write is not None
    assert write.body["tags"] == ["ct_old", "mm-paying", "mm-vip"]


def test_name_is_never_sent() -> None:
    bo = Recipient("bo@x.io", None, data={"name": "Bo Ek", "identity": "u"})
    assert decide(plan(bo), None) == Write("subscribe", {"email": "bo@x.io"})
