"""Parsing Mailmodo callbacks: every payload kind, name alias, timestamp form and failure."""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.activity import Activity, EventType, to_epoch_seconds
from app.consent.mapping import ConsentStatus, callback_opt_out
from app.identity.schemas import clean_clevertap_id
from app.mailmodo.source import (
    CallbackError,
    normalise_event_type,
    parse_callback,
    snake_key,
)

# --- fixtures from mailmodo.md §5.1 and §5.2, verbatim ---------------------------------------

JOURNEY_CUSTOM_EVENT: dict[str, Any] = {
    "triggerData": {
        "data": {},
        "eventProperty": {
            "Name": "APPLE iPhone 13 (Blue, 128 GB)",
            "Price": "829",
            "Currency": "USD",
        },
        "triggerSource": "New Custom Event Trigger - Product Viewed",
        "email": "gou****@mailmodo.com",
        "userId": "d3775892-****-4f2f-b9d5-e49810eb2cae",
        "journeyId": "3f135bf7-****-4e31-b265-f61cfe1bd423",
    }
}

JOURNEY_AFTER_CAMPAIGN: dict[str, Any] = {
    "eventData": {"type": "html"},
    "triggerData": {
        "data": {},
        "triggerSource": "CsvList",
        "email": "gou****@mailmodo.com",
        "userId": "cc56708d-****-4fea-8c07-a4bfa5a7b79b",
        "journeyId": "5d31c2b4-****-4a84-acd3-834cae80231b",
        "eventProperty": {},
    },
    "lastCampaignEmailRef": "064c76e7-****-4780-a001-226c066aaa12",
    "lastCampaignId": "31422f76-****-4a72-a630-dd6f9f615bc3",
}

FORM_SUBMISSION: dict[str, Any] = {
    "fuuid": "98255",
    "next-step-id": "success",
    "total-steps": "3",
    "responseId": "ad20a980-4fce-44b6-887d-2236df514a76",
    "recipientEmail": "test@rudderstack.com",
    "formId": "formosztd5",
    "recordedAt": {"ts": 1662695887, "date": "2022-09-09", "hour": 9, "minute": 28},
    "submissionSource": "amp",
    "elementjbtz42": "peace",
    "element8jzo13": ["Useful"],
    "recipientData": {"email": "test@rudderstack.com", "first_name": "abcda"},
    "recommend": "1",
    "liking": "downvote",
    "satisfaction": "1",
    "campaignId": "0b53e1bf-84ae-4198-9184-8a4d6e1fa3dd",
    "campaignName": "Campaign-testing",
}

FORM_ANSWERS = {
    "elementjbtz42": "peace",
    "element8jzo13": ["Useful"],
    "recommend": "1",
    "liking": "downvote",
    "satisfaction": "1",
}

CT_ID = "__g09c9bf3b0d374a259c86f5b855ec9b19"


def only(events: list[Activity]) -> Activity:
    assert len(events) == 1
    return events[0]


def activity(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"event": "opened", "email": "ana@example.com"}
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


# --- event names --------------------------------------------------------------------------

ALIASES = {
    EventType.OPENED: [
        "opened",
        "open",
        "Email Opened",
        "MM Email Opened",
        "email_opened",
        "EMAIL-OPENED",
        "  Opened  ",
        "mm_email_opened",
        "emailOpened",
    ],
    EventType.CLICKED: [
        "clicked",
        "click",
        "Link Clicked",
        "MM Email Link Clicked",
        "email_link_clicked",
        "link-clicked",
        "Email Clicked",
    ],
    EventType.FORM_SUBMITTED: [
        "form_submitted",
        "Email Form Submitted",
        "MM Email Form Submitted",
        "form submission",
        "Form-Submitted",
        "formSubmitted",
    ],
    EventType.BOUNCED: ["bounced", "bounce", "Email Bounced", "MM Email Bounced", "hard_bounce"],
    EventType.UNSUBSCRIBED: [
        "unsubscribed",
        "unsubscribe",
        "Email Unsubscribed",
        "MM Email Unsubscribed",
        "email-unsubscribed",
    ],
    EventType.SPAM: [
        "spam",
        "Email Marked as Spam",
        "MM Email Marked as Spam",
        "marked_as_spam",
        "complaint",
        "spam_report",
    ],
}


@pytest.mark.parametrize(
    ("name", "expected"),
    [(name, kind) for kind, names in ALIASES.items() for name in names],
)
def test_normalise_event_type_aliases(name: str, expected: EventType) -> None:
    assert normalise_event_type(name) is expected


@pytest.mark.parametrize(
    "name", ["", "  ", "Email Sent", "delivered", "MM", "email", "mm email", "opened twice", "x"]
)
def test_normalise_event_type_unknown(name: str) -> None:
    assert normalise_event_type(name) is None


def test_event_type_values_are_the_url_segments() -> None:
    assert [e.value for e in EventType] == [
        "opened",
        "clicked",
        "form_submitted",
        "bounced",
        "unsubscribed",
        "spam",
    ]
    for kind in EventType:
        assert normalise_event_type(kind.value) is kind


@pytest.mark.parametrize(
    ("name", "expected"),
    [(name, kind) for kind, names in ALIASES.items() for name in names],
)
def test_every_alias_works_in_an_activity_body(name: str, expected: EventType) -> None:
    assert only(parse_callback(activity(event=name))).type is expected


# --- activity events ------------------------------------------------------------------------


def test_activity_event_full_documented_shape() -> None:
    body = {
        "event": "clicked",
        "email": "  ana@example.com ",
        "clevertap_id": CT_ID,
        "timestamp": 1700000000,
        "event_id": "evt-1",
        "campaign_id": "c-1",
        "campaign_name": "Welcome",
        "campaign_type": "TRIGGERED",
        "template_id": "t-1",
        "template_name": "Welcome v2",
        "email_subject": "Hello!",
        "email_type": "AMP",
        "link_url": "https://example.com/a?b=c",
        "link_id": "l-1",
        "apple_privacy_open": False,
        "custom_flag": 3,
    }
    event = only(parse_callback(body))
    assert event == Activity(
        type=EventType.CLICKED,
        email="ana@example.com",
        clevertap_id=CT_ID,
        ts=1700000000,
        dedup_id="evt-1",
        properties={
            "campaign_id": "c-1",
            "campaign_name": "Welcome",
            "campaign_type": "TRIGGERED",
            "template_id": "t-1",
            "template_name": "Welcome v2",
            "email_subject": "Hello!",
            "email_type": "AMP",
            "link_url": "https://example.com/a?b=c",
            "link_id": "l-1",
            "apple_privacy_open": False,
            "custom_flag": 3,
        },
        form_answers={},
        kind="activity",
    )


def test_activity_bounce_and_unsubscribe_properties() -> None:
    bounce = only(
        parse_callback(activity(event="Email Bounced", reason="mailbox full", is_hard_bounce=True))
    )
    assert bounce.type is EventType.BOUNCED
    assert bounce.properties == {"reason": "mailbox full", "is_hard_bounce": True}
    unsub = only(parse_callback(activity(event="unsubscribe", reason="too many emails")))
    assert unsub.type is EventType.UNSUBSCRIBED
    assert unsub.properties == {"reason": "too many emails"}


@pytest.mark.parametrize(
    ("event", "extra", "hard"),
    [
        ("hard bounce", {}, True),
        ("Hard Bounce", {}, True),
        ("soft_bounce", {}, False),
        ("bounced", {}, None),  # says nothing about hardness
        ("hard bounce", {"is_hard_bounce": False}, False),  # the flag, when given, wins
    ],
)
def test_a_bounce_named_hard_or_soft_says_so(
    event: str, extra: dict[str, Any], hard: bool | None
) -> None:
    """A hard bounce sent only as the event's name is an opt-out CleverTap must hear of."""
    bounce = only(parse_callback(activity(event=event, **extra)))
    assert bounce.type is EventType.BOUNCED
    assert bounce.properties.get("is_hard_bounce") is hard
    assert (callback_opt_out(bounce) is ConsentStatus.BOUNCED) is bool(hard)


def test_activity_camel_case_keys_become_snake_case() -> None:
    body = activity(
        campaignName="Welcome",
        campaignId="c1",
        emailSubject="Hi",
        linkURL="https://x.test",
        isHardBounce=False,
        eventId="e-9",
        clevertapId=CT_ID,
    )
    event = only(parse_callback(body))
    assert event.properties == {
        "campaign_name": "Welcome",
        "campaign_id": "c1",
        "email_subject": "Hi",
        "link_url": "https://x.test",
        "is_hard_bounce": False,
    }
    assert event.clevertap_id == CT_ID
    assert event.dedup_id == "e-9"


def test_activity_event_id_spellings() -> None:
    assert only(parse_callback(activity(event_id="a"))).dedup_id == "a"
    assert only(parse_callback(activity(**{"eventID": "b"}))).dedup_id == "b"
    assert only(parse_callback(activity(messageId="c"))).dedup_id == "c"
    assert only(parse_callback(activity(event_id=123))).dedup_id == "123"
    assert only(parse_callback(activity(event_id=""))).dedup_id == ""
    assert only(parse_callback(activity())).dedup_id == ""


def test_activity_property_aliases_only_fill_gaps() -> None:
    event = only(parse_callback(activity(subject="S", url="https://u.test", bounce_reason="r")))
    assert event.properties == {"email_subject": "S", "link_url": "https://u.test", "reason": "r"}
    event = only(parse_callback(activity(subject="alias", email_subject="real")))
    assert event.properties == {"email_subject": "real"}


def test_segment_style_nesting() -> None:
    body = {
        "type": "track",
        "event": "Email Opened",
        "userId": "u-1",
        "messageId": "msg-1",
        "timestamp": "2024-01-02T03:04:05.678Z",
        "context": {"traits": {"email": "seg@example.com"}, "library": {"name": "x"}},
        "properties": {
            "email_id": "e8f2",
            "email_subject": "Sale",
            "campaign_name": "Jan",
            "campaign_type": "CONTACT_LIST",
            "apple_privacy_open": True,
            "template_name": "T1",
        },
        "integrations": {"All": True},
    }
    event = only(parse_callback(body))
    assert event.type is EventType.OPENED
    assert event.email == "seg@example.com"
    assert event.ts == int(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp())
    assert event.dedup_id == "msg-1"
    assert event.properties == {
        "email_id": "e8f2",
        "email_subject": "Sale",
        "campaign_name": "Jan",
        "campaign_type": "CONTACT_LIST",
        "apple_privacy_open": True,
        "template_name": "T1",
        "user_id": "u-1",
    }


def test_event_name_inside_properties() -> None:
    event = only(parse_callback({"email": "a@b.co", "properties": {"event": "click"}}))
    assert event.type is EventType.CLICKED


def test_email_id_holding_an_address_is_the_email() -> None:
    event = only(parse_callback({"event": "opened", "email_id": "x@y.test"}))
    assert event.email == "x@y.test"
    assert "email_id" not in event.properties
    event = only(parse_callback({"event": "opened", "email": "a@b.test", "email_id": "x@y.test"}))
    assert event.email == "a@b.test"


def test_email_from_traits_and_alternative_keys() -> None:
    assert only(parse_callback({"event": "open", "traits": {"email": "t@x.io"}})).email == "t@x.io"
    assert only(parse_callback({"event": "open", "recipientEmail": "r@x.io"})).email == "r@x.io"
    assert only(parse_callback({"event": "open", "email_address": "e@x.io"})).email == "e@x.io"


def test_nested_objects_and_nulls_are_not_passed_through() -> None:
    event = only(
        parse_callback(
            activity(
                campaign_name=None,
                meta={"a": 1},
                tags=["a", "b"],
                mixed=["a", {"b": 1}],
                data={"plan": "gold"},
            )
        )
    )
    assert event.properties == {"tags": ["a", "b"]}


def test_segment_call_type_is_not_a_property_but_other_types_are() -> None:
    assert only(parse_callback(activity(type="track"))).properties == {}
    assert only(parse_callback(activity(type="newsletter"))).properties == {"type": "newsletter"}


def test_form_submitted_activity_carries_answers() -> None:
    body = activity(
        event="form_submitted",
        form_id="f1",
        form_name="NPS",
        submission_type="amp",
        form_response={"How likely?": "9", "Why": ["price", "speed"]},
    )
    event = only(parse_callback(body))
    assert event.type is EventType.FORM_SUBMITTED
    assert event.kind == "activity"
    assert event.form_answers == {"How likely?": "9", "Why": ["price", "speed"]}
    assert event.properties == {"form_id": "f1", "form_name": "NPS", "submission_type": "amp"}


def test_form_response_variants() -> None:
    as_json = activity(event="form_submitted", form_response='{"q": "a"}')
    assert only(parse_callback(as_json)).form_answers == {"q": "a"}
    as_text = activity(event="form_submitted", form_response="free text")
    assert only(parse_callback(as_text)).form_answers == {"Response": "free text"}
    nested = activity(event="form_submitted", properties={"formResponse": {"q": 1}})
    assert only(parse_callback(nested)).form_answers == {"q": 1}
    empty = activity(event="form_submitted", form_response={})
    assert only(parse_callback(empty)).form_answers == {}


def test_form_response_ignored_for_other_events() -> None:
    event = only(parse_callback(activity(event="opened", form_response={"q": "a"})))
    assert event.form_answers == {}
    assert "form_response" not in event.properties


def test_path_event_overrides_and_supplies_the_type() -> None:
    assert only(parse_callback(activity(event="opened"), path_event="clicked")).type is (
        EventType.CLICKED
    )
    assert only(parse_callback(activity(event="nonsense"), path_event="spam")).type is (
        EventType.SPAM
    )
    no_event = {"email": "a@b.co"}
    assert only(parse_callback(no_event, path_event="Email Bounced")).type is EventType.BOUNCED


def test_blank_path_event_is_ignored() -> None:
    assert only(parse_callback(activity(event="click"), path_event="  ")).type is (
        EventType.CLICKED
    )


def test_unknown_path_event() -> None:
    with pytest.raises(CallbackError) as info:
        parse_callback(activity(), path_event="delivered")
    assert info.value.detail == {"event": "delivered", "known": [e.value for e in EventType]}


def test_unknown_event_name() -> None:
    with pytest.raises(CallbackError) as info:
        parse_callback(activity(event="Email Sent"))
    assert info.value.message == "unknown event type"
    assert info.value.detail == {"event": "Email Sent", "known": [e.value for e in EventType]}


def test_non_string_event_name() -> None:
    with pytest.raises(CallbackError, match="unknown event type"):
        parse_callback(activity(event=5))


def test_array_of_activity_events() -> None:
    events = parse_callback([activity(event="open", event_id="1"), activity(event="click")])
    assert [e.type for e in events] == [EventType.OPENED, EventType.CLICKED]
    assert [e.dedup_id for e in events] == ["1", ""]


def test_array_errors_name_the_item() -> None:
    with pytest.raises(CallbackError) as info:
        parse_callback([activity(), {"event": "open"}])
    assert info.value.message.startswith("item 1: no recipient")
    assert isinstance(info.value.detail, dict)
    assert info.value.detail["index"] == 1
    assert info.value.detail["error"]["missing"] == ["email", "clevertap_id"]
    with pytest.raises(CallbackError) as info:
        parse_callback([activity(), "x"])
    assert info.value.detail == {"index": 1, "got": "str"}
    with pytest.raises(CallbackError, match="empty array"):
        parse_callback([])


# --- identity -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"event": "open", "clevertap_id": CT_ID},
        {"event": "open", "clevertapId": CT_ID},
        {"event": "open", "objectId": CT_ID},
        {"event": "open", "ObjectID": CT_ID},
        {"event": "open", "CleverTap ID": CT_ID},
        {"event": "open", "data": {"clevertap_id": CT_ID}},
        {"event": "open", "data": {"CLEVERTAPID": CT_ID}},
        {"event": "open", "recipientData": {"objectId": CT_ID}},
        {"event": "open", "recipient_data": {"clevertap_id": CT_ID}},
        {"event": "open", "properties": {"clevertap_id": CT_ID}},
        {"event": "open", "properties": {"data": {"clevertap_id": CT_ID}}},
    ],
)
def test_activity_clevertap_id_locations(body: dict[str, Any]) -> None:
    event = only(parse_callback(body))
    assert event.clevertap_id == CT_ID
    assert event.email is None
    assert not any("clevertap" in k or "object" in k for k in event.properties)


def test_top_level_clevertap_id_wins_over_nested() -> None:
    body = activity(clevertap_id="top", data={"clevertap_id": "nested"})
    assert only(parse_callback(body)).clevertap_id == "top"


PLACEHOLDERS = [
    "",
    "   ",
    "${clevertap_id}",
    "{{clevertap_id}}",
    "{{ data.clevertap_id }}",
    "{% raw %}",
    "@{objectId}",
    "null",
    "NULL",
    "undefined",
    "None",
    "na",
    "N/A",
    "0",
    "-1",
    None,
    True,
    {"a": 1},
    ["x"],
    "has space",
    "x" * 257,
]


@pytest.mark.parametrize("value", PLACEHOLDERS)
def test_placeholder_clevertap_ids_are_ignored(value: Any) -> None:
    event = only(parse_callback(activity(clevertap_id=value)))
    assert event.clevertap_id is None
    assert clean_clevertap_id(value) is None


def test_placeholder_then_real_id_in_data() -> None:
    body = activity(clevertap_id="{{clevertap_id}}", data={"clevertap_id": CT_ID})
    assert only(parse_callback(body)).clevertap_id == CT_ID


def test_invalid_email_with_clevertap_id_keeps_the_event() -> None:
    event = only(parse_callback({"event": "open", "email": "nope", "clevertap_id": CT_ID}))
    assert event.email is None
    assert event.clevertap_id == CT_ID


def test_no_recipient_at_all() -> None:
    with pytest.raises(CallbackError) as info:
        parse_callback({"event": "opened", "campaign_name": "x"})
    assert info.value.detail == {"missing": ["email", "clevertap_id"], "where": "activity event"}


def test_invalid_email_is_reported() -> None:
    with pytest.raises(CallbackError) as info:
        parse_callback({"event": "opened", "email": "not an email", "clevertap_id": "null"})
    assert info.value.detail == {
        "missing": ["email", "clevertap_id"],
        "where": "activity event",
        "invalid": {"email": "not an email"},
    }


# --- timestamps -----------------------------------------------------------------------------

TS = 1662695887


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (TS, TS),
        (TS * 1000, TS),
        (TS * 1000 + 999, TS),
        (TS * 1_000_000, TS),
        (TS * 1_000_000_000, TS),
        (float(TS) + 0.75, TS),
        (TS * 1000.0, TS),
        (str(TS), TS),
        (f" {TS * 1000} ", TS),
        (f"{TS}.5", TS),
        ("1.662695887e9", TS),
        (f"$D_{TS}", TS),
        ("2022-09-09T03:58:07Z", TS),
        ("2022-09-09T03:58:07z", TS),
        ("2022-09-09T03:58:07.123Z", TS),
        ("2022-09-09T09:28:07+05:30", TS),
        ("2022-09-09T03:58:07", TS),
        ("2022-09-09 03:58:07", TS),
        ("2022-09-09T03:58:07+00:00", TS),
        ("2022-09-09", TS - (3 * 3600 + 58 * 60 + 7)),
        (datetime(2022, 9, 9, 3, 58, 7, tzinfo=UTC), TS),
        (datetime(2022, 9, 9, 3, 58, 7), TS),
        (datetime(2022, 9, 9, 9, 28, 7, tzinfo=timezone(timedelta(hours=5, minutes=30))), TS),
        (date(2022, 9, 9), TS - (3 * 3600 + 58 * 60 + 7)),
        (1, 1),
        (99_999_999_999, 99_999_999_999),
    ],
)
def test_to_epoch_seconds(raw: Any, expected: int) -> None:
    assert to_epoch_seconds(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        None,
        0,
        0.0,
        0.4,
        -5,
        "-1662695887",
        "0",
        "",
        "   ",
        "yesterday",
        "2022-13-45T00:00:00Z",
        "1970-01-01T00:00:00Z",
        "1969-12-31T23:59:59Z",
        "12:30",
        "0x1F",
        "1e400",
        float("nan"),
        float("inf"),
        float("-inf"),
        True,
        False,
        [TS],
        {"ts": TS},
        10**40,
        "9" * 5000,
        "$D_",
        "$D_abc",
    ],
)
def test_to_epoch_seconds_rejects(raw: Any) -> None:
    assert to_epoch_seconds(raw) is None


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("timestamp", TS, TS),
        ("timestamp", TS * 1000, TS),
        ("timestamp", "2022-09-09T03:58:07Z", TS),
        ("ts", TS, TS),
        ("ts", str(TS * 1000), TS),
        ("timestamp", 0, None),
        ("timestamp", "garbage", None),
        ("timestamp", None, None),
    ],
)
def test_activity_timestamp(field: str, value: Any, expected: int | None) -> None:
    assert only(parse_callback(activity(**{field: value}))).ts == expected


def test_timestamp_is_not_a_property() -> None:
    event = only(parse_callback(activity(timestamp=TS, ts=TS, time=TS)))
    assert event.properties == {}


# --- journey webhook card -------------------------------------------------------------------


def test_journey_custom_event_fixture() -> None:
    event = only(parse_callback(copy.deepcopy(JOURNEY_CUSTOM_EVENT), path_event="opened"))
    assert event == Activity(
        type=EventType.OPENED,
        email="gou****@mailmodo.com",
        clevertap_id=None,
        ts=None,
        dedup_id=(
            "journey:3f135bf7-****-4e31-b265-f61cfe1bd423:"
            "d3775892-****-4f2f-b9d5-e49810eb2cae:opened:"
        ),
        properties={
            "name": "APPLE iPhone 13 (Blue, 128 GB)",
            "price": "829",
            "currency": "USD",
            "journey_id": "3f135bf7-****-4e31-b265-f61cfe1bd423",
            "user_id": "d3775892-****-4f2f-b9d5-e49810eb2cae",
            "trigger_source": "New Custom Event Trigger - Product Viewed",
        },
        form_answers={},
        kind="journey",
    )


def test_journey_after_campaign_fixture() -> None:
    event = only(parse_callback(copy.deepcopy(JOURNEY_AFTER_CAMPAIGN), path_event="clicked"))
    assert event.type is EventType.CLICKED
    assert event.kind == "journey"
    assert event.email == "gou****@mailmodo.com"
    assert event.dedup_id == (
        "journey:5d31c2b4-****-4a84-acd3-834cae80231b:cc56708d-****-4fea-8c07-a4bfa5a7b79b:"
        "clicked:064c76e7-****-4780-a001-226c066aaa12"
    )
    assert event.properties == {
        "journey_id": "5d31c2b4-****-4a84-acd3-834cae80231b",
        "user_id": "cc56708d-****-4fea-8c07-a4bfa5a7b79b",
        "trigger_source": "CsvList",
        "campaign_id": "31422f76-****-4a72-a630-dd6f9f615bc3",
        "email_ref": "064c76e7-****-4780-a001-226c066aaa12",
        "email_type": "html",
    }


def test_journey_dedup_id_differs_per_event_type() -> None:
    opened = only(parse_callback(JOURNEY_AFTER_CAMPAIGN, path_event="opened"))
    clicked = only(parse_callback(JOURNEY_AFTER_CAMPAIGN, path_event="clicked"))
    assert opened.dedup_id != clicked.dedup_id


def test_journey_without_event_type() -> None:
    with pytest.raises(CallbackError) as info:
        parse_callback(copy.deepcopy(JOURNEY_AFTER_CAMPAIGN))
    assert info.value.message == "event type unknown: put it in the URL, e.g. /events/opened"
    assert isinstance(info.value.detail, dict)
    assert info.value.detail["missing"] == ["event"]


@pytest.mark.parametrize(
    ("where", "key"),
    [("data", "clevertap_id"), ("data", "clevertapId"), ("data", "objectId")],
)
def test_journey_clevertap_id_in_trigger_data(where: str, key: str) -> None:
    body = copy.deepcopy(JOURNEY_AFTER_CAMPAIGN)
    body["triggerData"][where] = {key: CT_ID, "first_name": "Ana"}
    assert only(parse_callback(body, path_event="opened")).clevertap_id == CT_ID


def test_journey_clevertap_id_at_top_level_and_placeholder_ignored() -> None:
    body = copy.deepcopy(JOURNEY_AFTER_CAMPAIGN)
    body["clevertap_id"] = CT_ID
    body["triggerData"]["data"] = {"clevertap_id": "${clevertap_id}"}
    assert only(parse_callback(body, path_event="opened")).clevertap_id == CT_ID
    del body["clevertap_id"]
    assert only(parse_callback(body, path_event="opened")).clevertap_id is None


def test_journey_clevertap_id_in_event_property_is_not_a_property() -> None:
    body = copy.deepcopy(JOURNEY_CUSTOM_EVENT)
    body["triggerData"]["eventProperty"]["clevertap_id"] = CT_ID
    event = only(parse_callback(body, path_event="opened"))
    assert event.clevertap_id == CT_ID
    assert "clevertap_id" not in event.properties


def test_journey_without_recipient() -> None:
    body = copy.deepcopy(JOURNEY_AFTER_CAMPAIGN)
    body["triggerData"]["email"] = "{{email}}"
    with pytest.raises(CallbackError) as info:
        parse_callback(body, path_event="opened")
    assert info.value.detail == {
        "missing": ["email", "clevertap_id"],
        "where": "journey webhook card (triggerData)",
        "invalid": {"email": "{{email}}"},
    }


def test_journey_trigger_data_not_an_object() -> None:
    with pytest.raises(CallbackError, match="'triggerData' must be an object"):
        parse_callback({"triggerData": "x"}, path_event="opened")


def test_journey_event_property_does_not_override_envelope() -> None:
    body = copy.deepcopy(JOURNEY_AFTER_CAMPAIGN)
    body["triggerData"]["eventProperty"] = {"journeyId": "fake", "Plan": "gold", "deep": {"a": 1}}
    event = only(parse_callback(body, path_event="opened"))
    assert event.properties["journey_id"] == "5d31c2b4-****-4a84-acd3-834cae80231b"
    assert event.properties["plan"] == "gold"
    assert "deep" not in event.properties


def test_journey_timestamp_when_present() -> None:
    body = copy.deepcopy(JOURNEY_AFTER_CAMPAIGN)
    body["timestamp"] = TS * 1000
    assert only(parse_callback(body, path_event="opened")).ts == TS


def test_journey_with_form_submission_data() -> None:
    body = copy.deepcopy(JOURNEY_AFTER_CAMPAIGN)
    body["triggerData"]["triggerSource"] = "form submission"
    body["triggerData"]["formSubmissionData"] = copy.deepcopy(FORM_SUBMISSION)
    event = only(parse_callback(body))
    assert event.type is EventType.FORM_SUBMITTED
    assert event.kind == "journey"
    assert event.ts == 1662695887
    assert event.form_answers == FORM_ANSWERS
    # The response id dedups the journey copy against the flat form webhook's copy.
    assert event.dedup_id == "ad20a980-4fce-44b6-887d-2236df514a76"
    assert event.properties["campaign_id"] == "31422f76-****-4a72-a630-dd6f9f615bc3"
    assert event.properties["form_id"] == "formosztd5"
    assert event.properties["campaign_name"] == "Campaign-testing"
    assert event.properties["trigger_source"] == "form submission"
    same = only(parse_callback(body, path_event="form_submitted"))
    assert same == event


def test_journey_form_without_response_id_uses_journey_key() -> None:
    body = copy.deepcopy(JOURNEY_CUSTOM_EVENT)
    body["triggerData"]["formSubmissionData"] = {"formId": "f", "q1": "yes"}
    event = only(parse_callback(body))
    assert event.form_answers == {"q1": "yes"}
    assert event.dedup_id.startswith("journey:3f135bf7")
    assert event.dedup_id.endswith(":form_submitted:")


def test_journey_url_event_wins_over_form_submission_data() -> None:
    body = copy.deepcopy(JOURNEY_AFTER_CAMPAIGN)
    body["triggerData"]["formSubmissionData"] = copy.deepcopy(FORM_SUBMISSION)
    event = only(parse_callback(body, path_event="opened"))
    assert event.type is EventType.OPENED
    assert event.form_answers == {}
    assert "form_id" not in event.properties
    assert event.ts is None  # the response's time is not the time of the open


def test_journey_empty_form_submission_data_needs_url_event() -> None:
    body = copy.deepcopy(JOURNEY_AFTER_CAMPAIGN)
    body["triggerData"]["formSubmissionData"] = {}
    with pytest.raises(CallbackError, match="put it in the URL"):
        parse_callback(body)


def test_journey_email_from_form_submission_data() -> None:
    body = {"triggerData": {"journeyId": "j", "userId": "u", "formSubmissionData": FORM_SUBMISSION}}
    assert only(parse_callback(body)).email == "test@rudderstack.com"


def test_journey_without_ids_has_no_dedup_id() -> None:
    body = {"triggerData": {"email": "a@b.co"}}
    assert only(parse_callback(body, path_event="opened")).dedup_id == ""


# --- flat form-submission webhook -----------------------------------------------------------


def test_form_submission_fixture() -> None:
    event = only(parse_callback(copy.deepcopy(FORM_SUBMISSION)))
    assert event == Activity(
        type=EventType.FORM_SUBMITTED,
        email="test@rudderstack.com",
        clevertap_id=None,
        ts=1662695887,
        dedup_id="ad20a980-4fce-44b6-887d-2236df514a76",
        properties={
            "form_id": "formosztd5",
            "response_id": "ad20a980-4fce-44b6-887d-2236df514a76",
            "submission_type": "amp",
            "campaign_id": "0b53e1bf-84ae-4198-9184-8a4d6e1fa3dd",
            "campaign_name": "Campaign-testing",
        },
        form_answers=FORM_ANSWERS,
        kind="form",
    )


def test_form_submission_is_a_form_whatever_the_url_says() -> None:
    event = only(parse_callback(copy.deepcopy(FORM_SUBMISSION), path_event="form_submitted"))
    assert event.kind == "form"
    assert event.type is EventType.FORM_SUBMITTED


def test_form_template_metadata_is_not_an_answer() -> None:
    body = copy.deepcopy(FORM_SUBMISSION)
    body["templateName"] = "NPS Survey"
    body["template_id"] = "t1"
    event = only(parse_callback(body))
    assert event.form_answers == FORM_ANSWERS
    assert event.properties["template_name"] == "NPS Survey"
    assert event.properties["template_id"] == "t1"


def test_form_clevertap_id_from_recipient_data() -> None:
    body = copy.deepcopy(FORM_SUBMISSION)
    body["recipientData"]["clevertap_id"] = CT_ID
    event = only(parse_callback(body))
    assert event.clevertap_id == CT_ID
    assert event.form_answers == FORM_ANSWERS


def test_form_email_falls_back_to_recipient_data() -> None:
    body = copy.deepcopy(FORM_SUBMISSION)
    del body["recipientEmail"]
    assert only(parse_callback(body)).email == "test@rudderstack.com"


def test_form_recorded_at_variants() -> None:
    body = copy.deepcopy(FORM_SUBMISSION)
    body["recordedAt"] = {"ts": TS * 1000}
    assert only(parse_callback(body)).ts == TS
    body["recordedAt"] = TS
    assert only(parse_callback(body)).ts == TS
    body["recordedAt"] = {"date": "2022-09-09"}
    assert only(parse_callback(body)).ts is None
    del body["recordedAt"]
    assert only(parse_callback(body)).ts is None


def test_form_without_response_id() -> None:
    body = copy.deepcopy(FORM_SUBMISSION)
    del body["responseId"]
    event = only(parse_callback(body))
    assert event.dedup_id == ""
    assert "response_id" not in event.properties


def test_form_without_recipient() -> None:
    body = {"responseId": "r1", "recipientEmail": "", "q": "a"}
    with pytest.raises(CallbackError) as info:
        parse_callback(body)
    assert info.value.detail == {
        "missing": ["email", "clevertap_id"],
        "where": "form submission",
    }


# --- unknown shapes -------------------------------------------------------------------------


@pytest.mark.parametrize("body", ["text", 42, None, True, 1.5])
def test_not_an_object(body: Any) -> None:
    with pytest.raises(CallbackError) as info:
        parse_callback(body)
    assert info.value.message == "expected a JSON object"
    assert isinstance(info.value.detail, dict)
    assert info.value.detail["got"] == type(body).__name__


def test_unknown_shape_lists_what_is_missing() -> None:
    with pytest.raises(CallbackError) as info:
        parse_callback({"hello": "world", "email": "a@b.co"})
    assert info.value.message == "unknown payload shape"
    assert isinstance(info.value.detail, dict)
    assert info.value.detail["missing"] == ["event"]
    assert info.value.detail["keys"] == ["email", "hello"]
    assert "triggerData" in info.value.detail["hint"]


def test_empty_object() -> None:
    with pytest.raises(CallbackError, match="unknown payload shape"):
        parse_callback({})


def test_callback_error_is_a_value_error() -> None:
    error = CallbackError("m", {"x": 1})
    assert isinstance(error, ValueError)
    assert str(error) == "m"
    assert (error.message, error.detail) == ("m", {"x": 1})
    assert CallbackError("m").detail is None


def test_parsing_does_not_mutate_the_body() -> None:
    bodies = [
        copy.deepcopy(FORM_SUBMISSION),
        copy.deepcopy(JOURNEY_AFTER_CAMPAIGN),
        activity(properties={"a": 1}),
    ]
    before = copy.deepcopy(bodies)
    for body in bodies:
        parse_callback(body, path_event="form_submitted")
    assert bodies == before


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("campaignName", "campaign_name"),
        ("Campaign Name", "campaign_name"),
        ("campaign-name", "campaign_name"),
        ("linkURL", "link_url"),
        ("HTMLContent", "html_content"),
        ("email_id", "email_id"),
        ("Prénom", "prénom"),
        ("  a..b  ", "a_b"),
        ("!!!", "!!!"),
    ],
)
def test_snake_key(key: str, expected: str) -> None:
    assert snake_key(key) == expected


# --- property-based: any JSON is either understood or refused with CallbackError --------------

KNOWN_KEYS = [
    "event",
    "email",
    "clevertap_id",
    "objectId",
    "timestamp",
    "ts",
    "event_id",
    "properties",
    "data",
    "recipientData",
    "triggerData",
    "formSubmissionData",
    "eventProperty",
    "journeyId",
    "userId",
    "lastCampaignEmailRef",
    "lastCampaignId",
    "eventData",
    "responseId",
    "recipientEmail",
    "recordedAt",
    "formId",
    "form_response",
    "campaign_name",
    "type",
]
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars | st.sampled_from(["opened", "Email Clicked", "a@b.co", "${x}", "1662695887000"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=10), children, max_size=6)
    ),
    max_leaves=30,
)


@given(json_values, st.none() | st.sampled_from(["opened", "form_submitted", "spam", "nope"]))
@settings(max_examples=400)
def test_parse_callback_never_fails_unexpectedly(body: Any, path_event: str | None) -> None:
    try:
        events = parse_callback(body, path_event=path_event)
    except CallbackError as exc:
        json.dumps(exc.detail)  # the detail goes into the 422 answer as is
        return
    assert events
    for event in events:
        assert event.email is not None or event.clevertap_id is not None
        assert event.ts is None or 0 < event.ts < 100_000_000_000
        assert isinstance(event.dedup_id, str)
        assert event.kind in {"activity", "journey", "form"}
        if event.type is not EventType.FORM_SUBMITTED:
            assert event.form_answers == {}
