"""Reading CleverTap webhook bodies: every shape, key casing, personalisation and skip reason."""

from __future__ import annotations

from typing import Any

import pytest

from app.clevertap.source import (
    ParsedCall,
    ShapeError,
    is_test_call,
    lower_keys,
    parse_call,
    personalisation,
    personalisation_key,
)

# --- verbatim samples from clevertap.md §1 ------------------------------------------------

TEST_CALL: dict[str, Any] = {
    "is_test": True,
    "targetId": 1234,
    "key_values": {"key": "value"},
    "profiles": [{"Identity": "UserId", "Email": "User@user.com", "push_token": "Token"}],
}

BROADCAST: dict[str, Any] = {
    "targetId": 1472124953,
    "key_values": {"PromoCode": "MT50", "PowerUser": "true"},
    "profiles": [
        {
            "Email": "jack@gmail.com",
            "Identity": "foo",
            "ObjectId": "-g55b74fb1030740e4a4931910a8abb862",
            "ProfileData": {"Last Score": 308, "High Score": 308, "Replayed": True},
            "Event_properties": {"Score": 1200, "Game Mode": "Practice", "Rating": 1},
            "Push_token": "19403aa5d3bb376769a8101c9cbf22159cb1836117659cc684a71243589982ea",
        }
    ],
}

NON_BROADCAST: dict[str, Any] = {
    "targetId": 1659684581,
    "key_values": {"SomeKey1": "SomeValue1"},
    "profiles": {
        "email": "webhook227@gmail.com",
        "identity": "webhook227@gmail.com",
        "all_identities": ["webhook227@gmail.com"],
        "objectId": "__Webhook227",
        "phone": "+917872483227",
        "name": "Nick",
        "profileData": {"customer type": "gold", "ts": 1586937505801},
        "event_properties": {"Product Id": 1, "date": "$D_1664890781"},
    },
}


def only(parsed: ParsedCall) -> Any:
    assert len(parsed.recipients) == 1, parsed
    return parsed.recipients[0]


# --- the three shapes ----------------------------------------------------------------------


def test_broadcast_sample_with_capitalised_keys() -> None:
    parsed = parse_call(BROADCAST)
    assert parsed.kind == "profiles"
    assert parsed.skipped == []
    r = only(parsed)
    assert r.email == "jack@gmail.com"
    assert r.clevertap_id == "-g55b74fb1030740e4a4931910a8abb862"
    assert r.data == {
        "identity": "foo",
        "last_score": 308,
        "high_score": 308,
        "replayed": True,
        "promocode": "MT50",
        "poweruser": "true",
        "clevertap_id": "-g55b74fb1030740e4a4931910a8abb862",
    }
    assert r.campaign_data == {"score": 1200, "game_mode": "Practice", "rating": 1}


def test_non_broadcast_sample_with_lower_case_keys_and_single_object() -> None:
    r = only(parse_call(NON_BROADCAST))
    assert r.email == "webhook227@gmail.com"
    assert r.clevertap_id == "__Webhook227"
    assert r.data == {
        "name": "Nick",
        "phone": "+917872483227",
        "identity": "webhook227@gmail.com",
        "customer_type": "gold",
        "ts": 1586937505801,
        "somekey1": "SomeValue1",
        "clevertap_id": "__Webhook227",
    }
    # CleverTap dates become ISO 8601 UTC.
    assert r.campaign_data == {"product_id": 1, "date": "2022-10-04T13:39:41Z"}


@pytest.mark.parametrize(
    "body",
    [
        TEST_CALL,
        {"is_test": "true", "profiles": []},
        {"IS_TEST": True},
        {"Is_Test": " TRUE "},
    ],
)
def test_test_call_is_recognised_in_any_casing(body: dict[str, Any]) -> None:
    parsed = parse_call(body)
    assert parsed == ParsedCall("test", [], [])
    assert is_test_call(body)


@pytest.mark.parametrize("flag", [False, "false", 0, 1, None, "yes"])
def test_is_test_only_when_true(flag: Any) -> None:
    body = {"is_test": flag, "email": "a@b.co"}
    assert not is_test_call(body)
    assert parse_call(body).kind == "custom"


def test_custom_mailmodo_shaped_body() -> None:
    body = {
        "Email": "Ann@Example.com",
        "clevertap_id": "__abc",
        "data": {"first_name": "Ann", "plan": "gold"},
        "campaign_data": {"coupon": "X1"},
        "subject": "Hi",
        "replyTo": "help@example.com",
        "fromName": "Shop",
        "addToList": "list-1",
        "reason": "done",
        "allowDuplicateEmail": True,
        "unknown": "ignored",
    }
    parsed = parse_call(body)
    assert parsed.kind == "custom"
    r = only(parsed)
    assert r.email == "Ann@Example.com"
    assert r.clevertap_id == "__abc"
    assert r.data == {"first_name": "Ann", "plan": "gold", "clevertap_id": "__abc"}
    assert r.campaign_data == {"coupon": "X1"}
    assert r.extras == {
        "subject": "Hi",
        "replyTo": "help@example.com",
        "fromName": "Shop",
        "addToList": "list-1",
        "reason": "done",
        "allowDuplicateEmail": True,
    }


@pytest.mark.parametrize("key", ["clevertap_id", "CleverTap_ID", "clevertapId", "objectId"])
def test_custom_body_clevertap_id_inside_data_is_moved_to_clevertap_id(key: str) -> None:
    r = only(parse_call({"email": "a@b.co", "data": {key: "__in_data", "x": 1}}))
    assert r.clevertap_id == "__in_data"
    assert r.data == {"x": 1, "clevertap_id": "__in_data"}


def test_custom_body_top_level_id_wins_over_data() -> None:
    r = only(
        parse_call({"email": "a@b.co", "clevertap_id": "__top", "data": {"objectId": "__data"}})
    )
    assert r.clevertap_id == "__top"
    assert r.data == {"clevertap_id": "__top"}


@pytest.mark.parametrize(
    "placeholder",
    ["${clevertap_id}", "{{ Profile.objectId }}", "{% raw %}", "@{id}", "", "  ", "null", "0"],
)
def test_custom_body_placeholder_ids_are_ignored(placeholder: str) -> None:
    r = only(parse_call({"email": "a@b.co", "clevertap_id": placeholder, "data": {"n": "Ann"}}))
    assert r.clevertap_id is None
    assert r.data == {"n": "Ann"}


def test_custom_body_placeholder_on_top_falls_back_to_real_id_in_data() -> None:
    r = only(
        parse_call(
            {
                "email": "a@b.co",
                "clevertap_id": "{{ Profile.x }}",
                "data": {"clevertap_id": "__real", "objectid": "${x}"},
            }
        )
    )
    assert r.clevertap_id == "__real"
    assert r.data == {"clevertap_id": "__real"}


@pytest.mark.parametrize("email", ["${user_email}", "not-an-email", "a@b", "a b@c.de", 42])
def test_custom_body_invalid_email_is_skipped(email: Any) -> None:
    parsed = parse_call({"email": email, "data": {}})
    assert parsed.recipients == []
    assert [s.as_dict() for s in parsed.skipped] == [{"index": 0, "reason": "invalid email"}]


@pytest.mark.parametrize("email", [None, ""])
def test_custom_body_without_email_is_skipped(email: Any) -> None:
    parsed = parse_call({"email": email})
    assert [s.reason for s in parsed.skipped] == ["no email"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"email": "a@b.co", "data": [1]}, "'data' must be an object"),
        ({"email": "a@b.co", "data": "x"}, "'data' must be an object"),
        ({"email": "a@b.co", "campaign_data": 3}, "'campaign_data' must be an object"),
        ({"profiles": "nope"}, "'profiles' must be an array or an object"),
        ({"profiles": 1}, "'profiles' must be an array or an object"),
        ({"targetId": 1, "key_values": {}}, "unknown body shape"),
        ({}, "unknown body shape"),
        ([{"email": "a@b.co"}], "expected a JSON object"),
        ("a@b.co", "expected a JSON object"),
        (None, "expected a JSON object"),
        (12, "expected a JSON object"),
    ],
)
def test_unknown_shapes_raise_shape_error(body: Any, message: str) -> None:
    with pytest.raises(ShapeError) as info:
        parse_call(body)
    assert info.value.message == message


def test_unknown_shape_detail_lists_the_keys_it_saw() -> None:
    with pytest.raises(ShapeError) as info:
        parse_call({"targetId": 1, "Foo": 2})
    assert info.value.detail["keys"] == ["Foo", "targetId"]
    assert info.value.detail["missing"] == ["profiles", "email"]


def test_profiles_win_over_top_level_email() -> None:
    parsed = parse_call({"email": "top@b.co", "profiles": {"email": "p@b.co"}})
    assert parsed.kind == "profiles"
    assert only(parsed).email == "p@b.co"


# --- profiles: fan-out, casing, skips ------------------------------------------------------


@pytest.mark.parametrize(
    ("email_key", "id_key", "data_key", "identity_key"),
    [
        ("Email", "ObjectId", "ProfileData", "Identity"),
        ("email", "objectId", "profileData", "identity"),
        ("EMAIL", "OBJECTID", "PROFILEDATA", "IDENTITY"),
        ("eMail", "objectid", "profiledata", "IdEntity"),
    ],
)
def test_profile_keys_in_any_casing(
    email_key: str, id_key: str, data_key: str, identity_key: str
) -> None:
    body = {
        "Profiles": [
            {
                email_key: "x@y.io",
                id_key: "__id",
                data_key: {"Plan": "pro"},
                identity_key: "u1",
                "Key_Values": {"Own": 1},
                "Event_Properties": {"E": 2},
            }
        ],
        "Key_Values": {"Call": 3},
    }
    r = only(parse_call(body))
    assert r.email == "x@y.io"
    assert r.clevertap_id == "__id"
    assert r.data == {"identity": "u1", "plan": "pro", "call": 3, "own": 1, "clevertap_id": "__id"}
    assert r.campaign_data == {"e": 2}


def test_fan_out_one_recipient_per_profile_with_skips_counted() -> None:
    body = {
        "key_values": {},
        "profiles": [
            {"email": "a@x.io", "objectId": "__a"},
            {"objectId": "__nomail"},
            {"email": "", "objectId": "__empty"},
            {"email": "broken@", "objectId": "__bad"},
            "not an object",
            {"email": "b@x.io"},
            {"profileData": {"Email": "c@x.io"}, "objectId": "__c"},
        ],
    }
    parsed = parse_call(body)
    assert [r.email for r in parsed.recipients] == ["a@x.io", "b@x.io", "c@x.io"]
    assert [r.clevertap_id for r in parsed.recipients] == ["__a", None, "__c"]
    assert [s.as_dict() for s in parsed.skipped] == [
        {"index": 1, "reason": "no email"},
        {"index": 2, "reason": "no email"},
        {"index": 3, "reason": "invalid email"},
        {"index": 4, "reason": "profile is not an object"},
    ]
    # Without an objectId there is no clevertap_id in data either.
    assert "clevertap_id" not in parsed.recipients[1].data


def test_empty_profiles_list_parses_to_nothing() -> None:
    assert parse_call({"profiles": []}) == ParsedCall("profiles", [], [])


def test_email_is_stripped_and_keeps_its_case() -> None:
    r = only(parse_call({"profiles": {"Email": "  Mixed.Case@Example.COM "}}))
    assert r.email == "Mixed.Case@Example.COM"


def test_precedence_profile_data_then_call_key_values_then_profile_key_values() -> None:
    body = {
        "key_values": {"Tier": "call", "Only Call": 1, "clevertap_id": "__forged"},
        "profiles": [
            {
                "email": "a@x.io",
                "objectId": "__real",
                "name": "From Name",
                "profileData": {"Tier": "profile", "Only Profile": 2, "Name": "Profile Name"},
                "key_values": {"tier": "own"},
            }
        ],
    }
    r = only(parse_call(body))
    assert r.data["tier"] == "own"
    assert r.data["only_call"] == 1
    assert r.data["only_profile"] == 2
    # profile data is applied after the top-level name
    assert r.data["name"] == "Profile Name"
    # clevertap_id is always the objectId, whatever the key-values say
    assert r.data["clevertap_id"] == "__real"


def test_call_key_values_override_profile_data() -> None:
    body = {
        "key_values": {"Plan": "call"},
        "profiles": {"email": "a@x.io", "profileData": {"plan": "p"}},
    }
    assert only(parse_call(body)).data == {"plan": "call"}


@pytest.mark.parametrize("object_id", [None, "", "null", "undefined", "${id}", True, {"a": 1}])
def test_unusable_object_ids_give_no_clevertap_id(object_id: Any) -> None:
    r = only(parse_call({"profiles": {"email": "a@x.io", "objectId": object_id}}))
    assert r.clevertap_id is None
    assert "clevertap_id" not in r.data


def test_numeric_object_id_becomes_a_string() -> None:
    r = only(parse_call({"profiles": {"email": "a@x.io", "objectId": 12345}}))
    assert r.clevertap_id == "12345"
    assert r.data["clevertap_id"] == "12345"


def test_name_phone_identity_only_when_present() -> None:
    r = only(
        parse_call(
            {
                "profiles": {
                    "email": "a@x.io",
                    "name": "",
                    "phone": 4915112345,
                    "identity": 77,
                }
            }
        )
    )
    assert r.data == {"phone": 4915112345, "identity": "77"}


# --- personalisation keys ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("First Name", "first_name"),
        ("customer type", "customer_type"),
        ("  Last--Score!! ", "last_score"),
        ("PromoCode", "promocode"),
        ("a.b/c", "a_b_c"),
        ("___", "_"),
        ("Plan (2024) ✓", "plan_2024"),
    ],
)
def test_personalisation_key(raw: str, key: str) -> None:
    assert personalisation_key(raw) == key


def test_personalisation_flattens_joins_converts_and_drops_nulls() -> None:
    values = {
        "First Name": "Ann",
        "Address": {"City": "Pune", "Geo": {"Lat": 1.5}, "Zip": None},
        "Tags": ["a", None, "b", 3],
        "Seen": ["$D_0", "$D_1664890781"],
        "Joined": "$D_1664890781",
        "Not a date": "$D_abc",
        "Gone": None,
        "Flag": False,
        "Count": 0,
    }
    assert personalisation(values) == {
        "first_name": "Ann",
        "address_city": "Pune",
        "address_geo_lat": 1.5,
        "tags": "a, b, 3",
        "seen": "1970-01-01T00:00:00Z, 2022-10-04T13:39:41Z",
        "joined": "2022-10-04T13:39:41Z",
        "not_a_date": "$D_abc",
        "flag": False,
        "count": 0,
    }


@pytest.mark.parametrize("values", [None, [], "x", 3])
def test_personalisation_of_non_objects_is_empty(values: Any) -> None:
    assert personalisation(values) == {}


# --- helpers -------------------------------------------------------------------------------


def test_lower_keys_first_spelling_wins() -> None:
    raw: dict[Any, Any] = {"Email": "first", "email": "second", 1: "x"}
    assert lower_keys(raw) == {"email": "first", "1": "x"}


@pytest.mark.parametrize("stamp", ["$D_99999999999999", "$D_-99999999999999"])
def test_out_of_range_clevertap_dates_are_kept_as_text(stamp: str) -> None:
    assert personalisation({"When": stamp}) == {"when": stamp}
