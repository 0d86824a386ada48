"""Mapping activity events to CleverTap upload records, and every sanitising rule."""

from __future__ import annotations

import copy
import math
from datetime import UTC, date, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.activity import Activity, EventType
from app.clevertap.bodies import (
    EVENT_NAMES,
    FORBIDDEN,
    PROPERTY_LABELS,
    CleverTapEvent,
    build_event_data,
    flatten,
    map_activity,
    property_label,
    sanitize_name,
    sanitize_value,
    to_epoch_seconds,
    upload_record,
    upload_record_for,
)
from app.mailmodo.source import parse_callback

NOW = 1_700_000_000
CT_ID = "__g09c9bf3b0d374a259c86f5b855ec9b19"


def make_event(
    kind: EventType = EventType.OPENED,
    *,
    ts: int | None = None,
    properties: dict[str, Any] | None = None,
    answers: dict[str, Any] | None = None,
) -> Activity:
    return Activity(
        type=kind,
        email="ana@example.com",
        clevertap_id=None,
        ts=ts,
        dedup_id="",
        properties=properties or {},
        form_answers=answers or {},
    )


def assert_valid_name(name: str, max_len: int = 120) -> None:
    assert name
    assert len(name) <= max_len
    assert not set(name) & FORBIDDEN
    assert name == name.strip()
    assert "  " not in name


def assert_valid_data(data: dict[str, Any], max_properties: int) -> None:
    assert len(data) <= max_properties
    for key, value in data.items():
        assert_valid_name(key)
        assert isinstance(value, str | int | float | bool)
        if isinstance(value, str):
            assert len(value) <= 512
            assert len(value.encode("utf-8")) <= 512


# --- constants ------------------------------------------------------------------------------


def test_forbidden_characters_are_cleverTaps_list() -> None:
    assert {"%", ">", "<", "!", "|", "&", ".", ":", ";", "$", "'", '"', "\\"} == FORBIDDEN


def test_event_names_cover_every_type_and_are_valid() -> None:
    assert set(EVENT_NAMES) == set(EventType)
    assert EVENT_NAMES == {
        EventType.OPENED: "MM Email Opened",
        EventType.CLICKED: "MM Email Link Clicked",
        EventType.FORM_SUBMITTED: "MM Email Form Submitted",
        EventType.BOUNCED: "MM Email Bounced",
        EventType.UNSUBSCRIBED: "MM Email Unsubscribed",
        EventType.SPAM: "MM Email Marked as Spam",
    }
    for name in EVENT_NAMES.values():
        assert sanitize_name(name) == name


def test_property_labels_are_valid_names() -> None:
    for key, label in PROPERTY_LABELS.items():
        assert sanitize_name(label) == label
        assert property_label(key) == label


@pytest.mark.parametrize(
    ("key", "label"),
    [
        ("campaign_id", "Campaign ID"),
        ("campaign_name", "Campaign Name"),
        ("campaign_type", "Campaign Type"),
        ("template_id", "Template ID"),
        ("template_name", "Template Name"),
        ("email_subject", "Subject"),
        ("email_type", "Email Type"),
        ("link_url", "Link URL"),
        ("link_id", "Link ID"),
        ("form_id", "Form ID"),
        ("form_name", "Form Name"),
        ("submission_type", "Submission Type"),
        ("reason", "Reason"),
        ("is_hard_bounce", "Hard Bounce"),
        ("apple_privacy_open", "Apple Privacy Open"),
        ("journey_id", "Journey ID"),
        ("user_id", "Mailmodo Contact ID"),
        ("trigger_source", "Trigger Source"),
        ("email_ref", "Email Ref"),
        ("response_id", "Response ID"),
        ("foo_bar", "Foo Bar"),
        ("price", "Price"),
        ("utm_source", "UTM Source"),
        ("order_id", "Order ID"),
        ("page_url", "Page URL"),
        ("a__b_", "A B"),
        ("prénom", "Prénom"),
        ("Already Nice", "Already Nice"),
        ("camelCase", "camelCase"),
        ("with-dash", "with-dash"),
        ("_", "_"),
        ("", ""),
    ],
)
def test_property_label(key: str, label: str) -> None:
    assert property_label(key) == label


# --- sanitize_name --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Campaign Name", "Campaign Name"),
        ("a.b", "ab"),
        ("%><!|&.:;$'\"\\x", "x"),
        ("What's your e-mail?", "Whats your e-mail?"),
        ("Q1: rate us (1-10)!", "Q1 rate us (1-10)"),
        ("  lots   of\t\nspace  ", "lots of space"),
        ("a . b", "a b"),
        ("ctrl\x00\x07\x7fchars", "ctrlchars"),
        ("zero\u200bwidth", "zerowidth"),
        ("Prénom 名前 😀", "Prénom 名前 😀"),
        ("#hash", "#hash"),
        ("", "Property"),
        ("   ", "Property"),
        ("...", "Property"),
        ("$.$", "Property"),
    ],
)
def test_sanitize_name(raw: str, expected: str) -> None:
    assert sanitize_name(raw) == expected


def test_sanitize_name_truncates_and_strips_after_cutting() -> None:
    assert sanitize_name("x" * 500) == "x" * 120
    assert sanitize_name("a" * 119 + " b") == "a" * 119
    assert sanitize_name("abcdef", 3) == "abc"


def test_sanitize_name_fallback() -> None:
    assert sanitize_name("...", fallback="Answer") == "Answer"
    assert sanitize_name("...", fallback="!!!") == "Property"
    assert sanitize_name("", 3) == "Pro"
    assert sanitize_name("abc", 0) == "a"


# --- sanitize_value -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("text", "text"),
        ("keeps . and $ in values", "keeps . and $ in values"),
        ("", ""),
        (None, ""),
        (True, True),
        (False, False),
        (0, 0),
        (42, 42),
        (-7, -7),
        (1.5, 1.5),
        (2**63 - 1, 2**63 - 1),
        (2**63, str(2**63)),
        (-(2**64), str(-(2**64))),
        (["a", "b", "c"], "a, b, c"),
        (["Useful"], "Useful"),
        ([], ""),
        ([1, None, 2.5, True], "1, 2.5, true"),
        (["a", ["b", "c"]], "a, b, c"),
        (("x", "y"), "x, y"),
        ([{"k": "v"}], '{"k": "v"}'),
        ({"a": 1}, '{"a": 1}'),
        (b"bytes", "bytes"),
        (datetime(2022, 9, 9, 3, 58, 7, tzinfo=UTC), "$D_1662695887"),
        (datetime(2022, 9, 9, 3, 58, 7), "$D_1662695887"),
        (date(2022, 9, 9), "$D_1662681600"),
        (datetime(1900, 1, 1, tzinfo=UTC), "1900-01-01T00:00:00+00:00"),
        ("$D_1662695887", "$D_1662695887"),
        ("lone \ud800 surrogate", "lone ? surrogate"),
    ],
)
def test_sanitize_value(raw: Any, expected: Any) -> None:
    result = sanitize_value(raw)
    assert result == expected
    assert type(result) is type(expected)


def test_sanitize_value_non_finite_floats_become_text() -> None:
    assert sanitize_value(float("nan")) == "nan"
    assert sanitize_value(float("inf")) == "inf"


def test_sanitize_value_truncates_characters() -> None:
    assert sanitize_value("x" * 600) == "x" * 512
    assert sanitize_value("x" * 512) == "x" * 512
    assert sanitize_value("abcdef", 4) == "abcd"


@pytest.mark.parametrize(
    ("char", "kept"),
    [("é", 256), ("名", 170), ("😀", 128), ("a", 512)],
)
def test_sanitize_value_truncates_bytes_without_splitting(char: str, kept: int) -> None:
    result = sanitize_value(char * 600)
    assert result == char * kept
    assert isinstance(result, str)
    assert len(result.encode("utf-8")) <= 512


def test_sanitize_value_long_list_is_truncated() -> None:
    result = sanitize_value(["word"] * 500)
    assert isinstance(result, str)
    assert len(result) == 512
    assert result.startswith("word, word")


# --- flatten --------------------------------------------------------------------------------


def test_flatten() -> None:
    assert flatten({"a": {"b": 1}}) == {"a b": 1}
    assert flatten({"a": {"b": {"c": [1]}, "d": None}, "e": 2}) == {
        "a b c": [1],
        "a d": None,
        "e": 2,
    }
    assert flatten({"a": {}}) == {}
    assert flatten({"x": 1}, "parent") == {"parent x": 1}
    assert flatten({1: {2: 3}}) == {"1 2": 3}


def test_flatten_with_labels_and_clashes() -> None:
    assert flatten({"address": {"city": "Pune", "zip_code": "4"}}, label=property_label) == {
        "Address City": "Pune",
        "Address Zip Code": "4",
    }
    assert flatten({"a b": 1, "a": {"b": 2}}) == {"a b": 1}


def test_flatten_very_deep_nesting_stops() -> None:
    deep: dict[str, Any] = {"leaf": 1}
    for _ in range(100):
        deep = {"k": deep}
    flat = flatten(deep)
    assert len(flat) == 1
    (value,) = flat.values()
    assert isinstance(value, dict)
    data = build_event_data(deep, max_properties=10)
    assert_valid_data(data, 10)


# --- build_event_data -----------------------------------------------------------------------


def test_build_event_data_labels_and_known_first_order() -> None:
    props = {
        "zeta": "z",
        "link_url": "https://x.test",
        "campaign_name": "Welcome",
        "email_subject": "Hi",
        "custom.key": "c",
    }
    data = build_event_data(props, max_properties=100)
    assert list(data) == ["Campaign Name", "Subject", "Link URL", "Zeta", "customkey"]
    assert data["Link URL"] == "https://x.test"


def test_build_event_data_drops_none_and_keeps_empty_strings() -> None:
    assert build_event_data({"a": None, "b": "", "c": 0}, max_properties=10) == {"B": "", "C": 0}


def test_build_event_data_flattens_and_joins() -> None:
    data = build_event_data(
        {"address": {"city": "Pune", "geo": {"lat": 1.5}}, "tags": ["a", "b"]}, max_properties=10
    )
    assert data == {"Address City": "Pune", "Address Geo Lat": 1.5, "Tags": "a, b"}


def test_build_event_data_dedupes_keys_after_sanitising() -> None:
    data = build_event_data(
        {"campaign_name": "a", "Campaign Name": "b", "campaign.name": "c", "CAMPAIGN  NAME": "d"},
        max_properties=10,
    )
    assert data == {
        "Campaign Name": "a",
        "Campaign Name 2": "b",
        "campaignname 3": "c",  # CleverTap may ignore case and spaces: treated as a clash
        "CAMPAIGN NAME 4": "d",
    }


def test_build_event_data_dedupe_suffix_respects_length() -> None:
    long = "X" * 150
    data = build_event_data({long: 1, long + "y": 2, long + "z": 3}, max_properties=10)
    assert list(data) == ["X" * 120, "X" * 118 + " 2", "X" * 118 + " 3"]


def test_build_event_data_caps_properties_keeping_known_ones() -> None:
    props: dict[str, Any] = {f"extra_{i}": i for i in range(200)}
    props["campaign_name"] = "Welcome"
    props["email_subject"] = "Hi"
    data = build_event_data(props, max_properties=100)
    assert len(data) == 100
    assert list(data)[:2] == ["Campaign Name", "Subject"]
    assert "Extra 97" in data
    assert "Extra 98" not in data


def test_build_event_data_cap_counts_flattened_properties() -> None:
    data = build_event_data({"a": {str(i): i for i in range(10)}}, max_properties=3)
    assert data == {"A 0": 0, "A 1": 1, "A 2": 2}
    assert build_event_data({"a": 1}, max_properties=0) == {}


def test_build_event_data_forbidden_only_names() -> None:
    assert build_event_data({"...": 1, "$$$": 2}, max_properties=5) == {
        "Property": 1,
        "Property 2": 2,
    }


# --- to_epoch_seconds (re-exported here) ----------------------------------------------------


def test_to_epoch_seconds_reexport() -> None:
    assert to_epoch_seconds(1662695887000) == 1662695887
    assert to_epoch_seconds("2022-09-09T03:58:07Z") == 1662695887
    assert to_epoch_seconds(0) is None
    assert to_epoch_seconds("garbage") is None


def test_to_epoch_seconds_far_future_dates_are_not_read_as_milliseconds() -> None:
    assert to_epoch_seconds(datetime(9999, 12, 31, tzinfo=UTC)) is None
    assert to_epoch_seconds("9999-12-31T00:00:00Z") is None


# --- map_activity ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [k for k in EventType if k is not EventType.FORM_SUBMITTED])
def test_map_each_event_type(kind: EventType) -> None:
    event = make_event(kind, ts=1662695887, properties={"campaign_name": "Welcome"})
    assert map_activity(event, received_at_epoch=NOW) == [
        CleverTapEvent(EVENT_NAMES[kind], {"Campaign Name": "Welcome"}, 1662695887)
    ]


def test_map_uses_arrival_time_without_payload_time() -> None:
    (mapped,) = map_activity(make_event(), received_at_epoch=NOW)
    assert mapped.ts == NOW
    (mapped,) = map_activity(make_event(), received_at_epoch=NOW * 1000)
    assert mapped.ts == NOW


@pytest.mark.parametrize("bad", [0, -1])
def test_map_refuses_a_zero_time(bad: int) -> None:
    with pytest.raises(ValueError, match="received_at_epoch"):
        map_activity(make_event(), received_at_epoch=bad)


def test_map_ignores_a_zero_payload_time() -> None:
    (mapped,) = map_activity(make_event(ts=0), received_at_epoch=NOW)
    assert mapped.ts == NOW


def test_map_respects_max_properties() -> None:
    props = {f"p{i}": i for i in range(50)}
    (mapped,) = map_activity(make_event(properties=props), received_at_epoch=NOW, max_properties=7)
    assert len(mapped.data) == 7


def test_map_clicked_full() -> None:
    props = {
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
    }
    (mapped,) = map_activity(make_event(EventType.CLICKED, properties=props), received_at_epoch=NOW)
    assert mapped.name == "MM Email Link Clicked"
    assert mapped.data == {
        "Campaign Name": "Welcome",
        "Campaign ID": "c-1",
        "Campaign Type": "TRIGGERED",
        "Subject": "Hello!",
        "Email Type": "AMP",
        "Template Name": "Welcome v2",
        "Template ID": "t-1",
        "Link URL": "https://example.com/a?b=c",
        "Link ID": "l-1",
        "Apple Privacy Open": False,
    }


def test_map_bounce() -> None:
    event = make_event(EventType.BOUNCED, properties={"reason": "full", "is_hard_bounce": True})
    (mapped,) = map_activity(event, received_at_epoch=NOW)
    assert mapped == CleverTapEvent(
        "MM Email Bounced", {"Reason": "full", "Hard Bounce": True}, NOW
    )


def test_map_form_submission_gives_two_events() -> None:
    event = make_event(
        EventType.FORM_SUBMITTED,
        ts=1662695887,
        properties={
            "form_id": "f1",
            "response_id": "r1",
            "campaign_name": "Spring",
            "template_name": "NPS Survey",
            "submission_type": "amp",
        },
        answers={"How likely?": "9", "Why.": ["price", "speed"], "Comment": None},
    )
    summary, answers = map_activity(event, received_at_epoch=NOW)
    assert summary == CleverTapEvent(
        "MM Email Form Submitted",
        {
            "Campaign Name": "Spring",
            "Template Name": "NPS Survey",
            "Form ID": "f1",
            "Submission Type": "amp",
            "Response ID": "r1",
            "Answer Count": 2,  # the unanswered question does not count
        },
        1662695887,
    )
    assert answers == CleverTapEvent(
        "MM NPS Survey Form Submitted",
        {
            "How likely?": "9",
            "Why": "price, speed",
            "Form ID": "f1",
            "Response ID": "r1",
            "Campaign Name": "Spring",
            "Template Name": "NPS Survey",
        },
        1662695887,
    )


@pytest.mark.parametrize(
    ("properties", "name"),
    [
        ({"template_name": "T", "campaign_name": "C", "form_id": "F"}, "MM T Form Submitted"),
        ({"campaign_name": "C", "form_id": "F"}, "MM C Form Submitted"),
        ({"form_id": "F"}, "MM F Form Submitted"),
        ({}, "MM Unknown Form Submitted"),
        ({"template_name": "...", "campaign_name": "C"}, "MM C Form Submitted"),
        ({"template_name": "", "form_id": 12}, "MM 12 Form Submitted"),
        (
            {"template_name": "Mr. O'Brien's <Survey> & co.!"},
            "MM Mr OBriens Survey co Form Submitted",
        ),
        ({"template_name": "a\n\n b"}, "MM a b Form Submitted"),
        ({"template_name": "N" * 300}, "MM " + "N" * 102 + " Form Submitted"),
    ],
)
def test_form_answers_event_name(properties: dict[str, Any], name: str) -> None:
    event = make_event(EventType.FORM_SUBMITTED, properties=properties, answers={"q": "a"})
    _, answers = map_activity(event, received_at_epoch=NOW)
    assert answers.name == name
    assert_valid_name(answers.name)


def test_form_answers_keep_their_own_names_and_win_clashes() -> None:
    event = make_event(
        EventType.FORM_SUBMITTED,
        properties={"form_id": "f1"},
        answers={"form_id": "raw answer", "Form ID": "answer 2", "nested": {"a": {"b": 1}}},
    )
    _, answers = map_activity(event, received_at_epoch=NOW)
    assert answers.data == {
        "form_id": "raw answer",
        "Form ID": "answer 2",
        "nested a b": 1,
        "Form ID 2": "f1",
    }


def test_form_without_answers_still_gives_both_events() -> None:
    summary, answers = map_activity(
        make_event(EventType.FORM_SUBMITTED, properties={"form_id": "f"}),
        received_at_epoch=NOW,
    )
    assert summary.data == {"Form ID": "f", "Answer Count": 0}
    assert answers == CleverTapEvent("MM f Form Submitted", {"Form ID": "f"}, NOW)


def test_form_events_respect_max_properties() -> None:
    event = make_event(
        EventType.FORM_SUBMITTED,
        properties={f"p{i}": i for i in range(20)} | {"form_id": "f"},
        answers={f"q{i}": i for i in range(20)},
    )
    summary, answers = map_activity(event, received_at_epoch=NOW, max_properties=5)
    assert len(summary.data) == 5
    assert "Form ID" in summary.data
    assert list(answers.data) == ["q0", "q1", "q2", "q3", "q4"]


# --- upload_record --------------------------------------------------------------------------


def test_upload_record_with_object_id() -> None:
    event = CleverTapEvent("MM Email Opened", {"Campaign Name": "W"}, 1662695704)
    assert upload_record(event, object_id=CT_ID) == {
        "type": "event",
        "evtName": "MM Email Opened",
        "evtData": {"Campaign Name": "W"},
        "ts": 1662695704,
        "objectId": CT_ID,
    }


def test_upload_record_with_identity_and_copies_data() -> None:
    event = CleverTapEvent("MM Email Opened", {"a": 1}, 1662695704)
    record = upload_record(event, identity=" ana@example.com ")
    assert record["identity"] == "ana@example.com"
    assert "objectId" not in record
    record["evtData"]["b"] = 2
    assert event.data == {"a": 1}


@pytest.mark.parametrize(
    ("object_id", "identity"),
    [(None, None), ("", ""), ("  ", None), (CT_ID, "a@b.co")],
)
def test_upload_record_needs_exactly_one_identifier(
    object_id: str | None, identity: str | None
) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        upload_record(CleverTapEvent("x", {}, NOW), object_id=object_id, identity=identity)


# --- end to end over the documented fixtures ------------------------------------------------

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


def test_form_fixture_to_records() -> None:
    (event,) = parse_callback(copy.deepcopy(FORM_SUBMISSION))
    records = [
        upload_record(e, identity=event.email) for e in map_activity(event, received_at_epoch=NOW)
    ]
    assert records == [
        {
            "type": "event",
            "evtName": "MM Email Form Submitted",
            "evtData": {
                "Campaign Name": "Campaign-testing",
                "Campaign ID": "0b53e1bf-84ae-4198-9184-8a4d6e1fa3dd",
                "Form ID": "formosztd5",
                "Submission Type": "amp",
                "Response ID": "ad20a980-4fce-44b6-887d-2236df514a76",
                "Answer Count": 5,
            },
            "ts": 1662695887,
            "identity": "test@rudderstack.com",
        },
        {
            "type": "event",
            "evtName": "MM Campaign-testing Form Submitted",
            "evtData": {
                "elementjbtz42": "peace",
                "element8jzo13": "Useful",
                "recommend": "1",
                "liking": "downvote",
                "satisfaction": "1",
                "Form ID": "formosztd5",
                "Response ID": "ad20a980-4fce-44b6-887d-2236df514a76",
                "Campaign Name": "Campaign-testing",
            },
            "ts": 1662695887,
            "identity": "test@rudderstack.com",
        },
    ]


def test_journey_fixture_to_record() -> None:
    (event,) = parse_callback(copy.deepcopy(JOURNEY_AFTER_CAMPAIGN), path_event="opened")
    (mapped,) = map_activity(event, received_at_epoch=NOW)
    assert upload_record(mapped, object_id=CT_ID) == {
        "type": "event",
        "evtName": "MM Email Opened",
        "evtData": {
            "Campaign ID": "31422f76-****-4a72-a630-dd6f9f615bc3",
            "Email Type": "html",
            "Journey ID": "5d31c2b4-****-4a84-acd3-834cae80231b",
            "Mailmodo Contact ID": "cc56708d-****-4fea-8c07-a4bfa5a7b79b",
            "Trigger Source": "CsvList",
            "Email Ref": "064c76e7-****-4780-a001-226c066aaa12",
        },
        "ts": NOW,
        "objectId": CT_ID,
    }


def test_activity_with_millisecond_timestamp_to_record() -> None:
    body = {
        "event": "MM Email Link Clicked",
        "clevertap_id": CT_ID,
        "timestamp": 1662695887123,
        "campaignName": "Spring. Sale!",
        "link_url": "https://shop.test/a.b",
        "properties": {"emailSubject": "50% off"},
    }
    (event,) = parse_callback(body)
    (mapped,) = map_activity(event, received_at_epoch=NOW)
    record = upload_record(mapped, object_id=event.clevertap_id)
    assert record["ts"] == 1662695887
    assert record["evtData"] == {
        "Campaign Name": "Spring. Sale!",
        "Subject": "50% off",
        "Link URL": "https://shop.test/a.b",
    }


# --- property-based -------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=30), children, max_size=5)
    ),
    max_leaves=40,
)
json_objects = st.dictionaries(st.text(max_size=200), json_values, max_size=30)


@given(st.text(), st.integers(min_value=1, max_value=600))
def test_sanitize_name_is_always_valid(name: str, max_len: int) -> None:
    result = sanitize_name(name, max_len)
    assert_valid_name(result, max_len)
    assert sanitize_name(result, max_len) == result  # idempotent


@given(st.text())
def test_sanitize_name_default_length(name: str) -> None:
    assert_valid_name(sanitize_name(name))


@given(json_values)
def test_sanitize_value_is_always_a_valid_scalar(value: Any) -> None:
    result = sanitize_value(value)
    assert isinstance(result, str | int | float | bool)
    if isinstance(result, str):
        assert len(result) <= 512
        assert len(result.encode("utf-8")) <= 512
    if isinstance(result, int) and not isinstance(result, bool):
        assert -(2**63) <= result < 2**63


@given(st.text(min_size=400, max_size=2000))
def test_sanitize_value_truncation_is_a_prefix(text: str) -> None:
    result = sanitize_value(text)
    assert isinstance(result, str)
    assert text.startswith(result)


@given(json_objects, st.integers(min_value=0, max_value=150))
@settings(max_examples=200)
def test_build_event_data_is_always_valid(props: dict[str, Any], max_properties: int) -> None:
    assert_valid_data(build_event_data(props, max_properties=max_properties), max_properties)


@given(
    st.sampled_from(list(EventType)),
    json_objects,
    json_objects,
    st.one_of(st.none(), st.integers(min_value=-10, max_value=10**13)),
    st.integers(min_value=1, max_value=120),
)
@settings(max_examples=150)
def test_map_activity_always_gives_valid_records(
    kind: EventType,
    props: dict[str, Any],
    answers: dict[str, Any],
    ts: int | None,
    max_properties: int,
) -> None:
    event = make_event(kind, ts=ts, properties=props, answers=answers)
    mapped = map_activity(event, received_at_epoch=NOW, max_properties=max_properties)
    assert len(mapped) == (2 if kind is EventType.FORM_SUBMITTED else 1)
    for item in mapped:
        assert_valid_name(item.name)
        assert item.name.startswith("MM ")
        assert_valid_data(item.data, max_properties)
        assert 0 < item.ts < 100_000_000_000
        record = upload_record(item, identity="ana@example.com")
        assert record["ts"] == item.ts


@given(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(),
        st.from_regex(r"\A-?\d{1,25}(\.\d{0,6})?\Z"),
        st.datetimes(timezones=st.none() | st.just(UTC)),
        st.dates(),
        st.datetimes().map(lambda d: d.isoformat()),
        st.datetimes().map(lambda d: d.isoformat() + "Z"),
    )
)
@settings(max_examples=500)
def test_to_epoch_seconds_never_zero_or_milliseconds(value: Any) -> None:
    result = to_epoch_seconds(value)
    assert result is None or (isinstance(result, int) and 0 < result < 100_000_000_000)


@given(st.integers(min_value=1, max_value=99_999_999_999))
def test_to_epoch_seconds_keeps_seconds_and_reads_milliseconds(seconds: int) -> None:
    assert to_epoch_seconds(seconds) == seconds
    if seconds >= 100_000_000:  # ms of an earlier second would overlap the seconds range
        assert to_epoch_seconds(seconds * 1000) == seconds
        assert to_epoch_seconds(str(seconds * 1000)) == seconds


@given(st.floats(min_value=1.0, max_value=1e30))
def test_to_epoch_seconds_floats_land_in_range(value: float) -> None:
    result = to_epoch_seconds(value)
    assert result is None or 0 < result < 100_000_000_000
    assert not math.isnan(value)


# --- the stored event record -----------------------------------------------------------------

#: A payload exactly as the bridge has always stored it (rows in users' databases look so).
STORED_BEFORE = '{"evtName":"MM Email Opened","evtData":{"Campaign Name":"Spring"},"ts":1700000000}'


def test_stored_event_round_trips() -> None:
    event = CleverTapEvent("MM Email Link Clicked", {"Link URL": "https://x", "N": 1}, NOW)
    assert CleverTapEvent.from_json(event.to_json()) == event


def test_rows_stored_by_earlier_versions_load_and_are_written_back_identically() -> None:
    event = CleverTapEvent.from_json(STORED_BEFORE)
    assert event == CleverTapEvent("MM Email Opened", {"Campaign Name": "Spring"}, NOW)
    assert event.to_json() == STORED_BEFORE


def test_upload_record_for_a_stored_event_prefers_the_clevertap_id() -> None:
    by_id = upload_record_for(STORED_BEFORE, clevertap_id=CT_ID, email="a@example.com")
    assert by_id is not None
    assert by_id["objectId"] == CT_ID
    assert "identity" not in by_id
    by_email = upload_record_for(STORED_BEFORE, clevertap_id=None, email="a@example.com")
    assert by_email is not None
    assert by_email["identity"] == "a@example.com"
    assert upload_record_for(STORED_BEFORE, clevertap_id=None, email=None) is None
