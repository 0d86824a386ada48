"""The contact-sync rules of shared/reference/contact-sync.md, as pure functions."""

from __future__ import annotations

import pytest

from app.contacts.rules import candidates, fill_blanks, managed_tags, tag_name


def test_phone_priority_mobile_default_work_home() -> None:
    assert candidates({"home_phone": "4", "work_phone": "3", "phone": "2", "mobile": "1"}) == {
        "phone": "1"
    }
    assert candidates({"home_phone": "4", "work_phone": "3", "phone": "2"})["phone"] == "2"
    assert candidates({"home_phone": "4", "work_phone": "3"})["phone"] == "3"
    assert candidates({"home_phone": "4", "mobile": " "})["phone"] == "4"
    assert "phone" not in candidates({"name": "Ann"})


def test_names_are_taken_but_a_full_name_is_not_split() -> None:
    assert candidates({"first_name": "Anna", "last_name": "Lee"}) == {
        "first_name": "Anna",
        "last_name": "Lee",
    }
    assert candidates({"name": "Anna Lee"}) == {}


@pytest.mark.parametrize("existing", [{}, {"first_name": None}, {"first_name": "  "}])
def test_blank_fields_are_filled(existing: dict[str, object]) -> None:
    assert fill_blanks({"first_name": "Anna"}, existing) == {"first_name": "Anna"}


def test_existing_values_are_never_overwritten_each_field_on_its_own() -> None:
    offered = {"first_name": "Anna", "last_name": "Lee", "phone": "+4790000001"}
    existing = {"first_name": "Ann", "phone": ""}
    assert fill_blanks(offered, existing) == {"last_name": "Lee", "phone": "+4790000001"}


def test_empty_offers_are_left_out_not_sent_blank() -> None:
    assert fill_blanks({"first_name": ""}, {}) == {}


def test_tags_are_normalised_prefixed_sorted() -> None:
    assert tag_name("  VIP Customer!! ") == "vip-customer"
    assert len(tag_name("x" * 500)) == 99
    assert managed_tags(["paying", "VIP", "vip", ""], "ct_") == "ct_paying,ct_vip"
    assert managed_tags("paying, vip", "ct_") == "ct_paying,ct_vip"
    assert managed_tags([], "ct_") == ""  # named but empty: clears the managed tags
    assert managed_tags(None, "ct_") is None  # not named: untouched
