"""Every body we send Mailmodo, built from a neutral Recipient (pure, no HTTP)."""

from __future__ import annotations

import orjson
import pytest

from app.mailmodo.bodies import (
    DEFAULT_ABORT_REASON,
    SyncPlan,
    add_to_list_body,
    add_to_list_payload,
    stored_payload,
    sync_plan,
    trigger_body,
)
from app.outbox.models import Operation
from app.recipient import Recipient

ANN = Recipient(
    "ann@example.com",
    "ct-1",
    data={"first_name": "Ann", "tags": ["VIP", "New"]},
    campaign_data={"order": "42"},
    extras={"subject": "Hi", "reason": "left", "allowDuplicateEmail": 1},
)


def test_campaign_trigger_carries_data_campaign_data_and_trigger_fields() -> None:
    assert trigger_body(Operation.CAMPAIGN_TRIGGER, ANN) == {
        "email": "ann@example.com",
        "data": {"first_name": "Ann", "tags": ["VIP", "New"]},
        "campaign_data": {"order": "42"},
        "subject": "Hi",
    }


def test_journey_start_carries_data_and_the_duplicate_flag_as_a_bool() -> None:
    assert trigger_body(Operation.JOURNEY_START, ANN) == {
        "email": "ann@example.com",
        "data": {"first_name": "Ann", "tags": ["VIP", "New"]},
        "allowDuplicateEmail": True,
    }


def test_journey_abort_gives_the_reason_or_the_default() -> None:
    assert trigger_body(Operation.JOURNEY_ABORT, ANN) == {
        "email": "ann@example.com",
        "reason": "left",
    }
    plain = Recipient("bo@example.com", None)
    assert trigger_body(Operation.JOURNEY_ABORT, plain)["reason"] == DEFAULT_ABORT_REASON
    assert trigger_body(Operation.CAMPAIGN_TRIGGER, plain) == {"email": "bo@example.com"}


def test_sync_plan_keeps_candidates_and_always_written_fields() -> None:
    plan = sync_plan(ANN, "Customers", tag_prefix="ct_", tags_field="Tags")
    assert plan == {
        "email": "ann@example.com",
        "listName": "Customers",
        "candidates": {"first_name": "Ann"},
        "always": {"clevertap_id": "ct-1", "ct_tags": "ct_new,ct_vip"},
    }


@pytest.mark.parametrize("tags", ["", [], " , "])
def test_a_sync_never_sends_an_empty_tags_value(tags: object) -> None:
    """contact-sync.md: leave a key out rather than send "" (its effect is undocumented)."""
    someone = Recipient("bo@example.com", "ct-2", data={"tags": tags})
    plan = sync_plan(someone, "L", tag_prefix="ct_", tags_field="tags")
    assert plan["always"] == {"clevertap_id": "ct-2"}


@pytest.mark.parametrize("operation", list(Operation)[:4])
def test_stored_payload_is_the_body_or_the_plan(operation: Operation) -> None:
    stored = stored_payload(operation, ANN, "t", tag_prefix="ct_", tags_field="tags")
    expected = (
        sync_plan(ANN, "t", tag_prefix="ct_", tags_field="tags")
        if operation is Operation.LIST_SYNC
        else trigger_body(operation, ANN)
    )
    assert orjson.loads(stored) == expected


def test_a_stored_plan_reads_back_and_fills_only_blanks() -> None:
    stored = stored_payload(Operation.LIST_SYNC, ANN, "L", tag_prefix="ct_", tags_field="tags")
    plan = SyncPlan.from_json(stored)
    assert plan == SyncPlan(
        "ann@example.com",
        "L",
        {"first_name": "Ann"},
        {"clevertap_id": "ct-1", "ct_tags": "ct_new,ct_vip"},
    )
    assert add_to_list_body(plan, {"first_name": "Annie"}) == {
        "email": "ann@example.com",
        "listName": "L",
        "data": {"clevertap_id": "ct-1", "ct_tags": "ct_new,ct_vip"},
    }
    assert orjson.loads(add_to_list_payload(plan, {}))["data"]["first_name"] == "Ann"


def test_a_plan_stored_without_optional_parts_still_loads() -> None:
    plan = SyncPlan.from_json('{"email":"a@example.com","listName":"L"}')
    assert add_to_list_body(plan, {}) == {"email": "a@example.com", "listName": "L"}
