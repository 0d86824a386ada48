"""The contact-sync rules of shared/reference/contact-sync.md, as pure functions."""

from __future__ import annotations

import pytest

from app.contacts.rules import (
    candidates,
    fill_blanks,
    managed_tags,
    merge_tags,
    tag_name,
    wanted_tags,
)


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


def test_wanted_tags_are_the_one_source_of_both_forms() -> None:
    assert wanted_tags("paying, VIP, vip", "ct_") == ["ct_paying", "ct_vip"]
    assert managed_tags("paying, VIP, vip", "ct_") == ",".join(
        wanted_tags("paying, vip", "ct_") or []
    )
    assert wanted_tags(None, "ct_") is None
    assert wanted_tags("", "ct_") == []


def test_merge_tags_worked_example() -> None:
    """contact-sync.md §5: external tags kept in their order, ct_trial removed, ct_paying added."""
    existing = ["newsletter-2024", "ct_vip", "ct_trial"]
    assert merge_tags(existing, ["ct_paying", "ct_vip"], "ct_") == [
        "newsletter-2024",
        "ct_vip",
        "ct_paying",
    ]


@pytest.mark.parametrize(
    ("existing", "wanted", "merged"),
    [
        (["a", "ct_x", "b"], None, ["a", "ct_x", "b"]),  # not named: untouched
        (["a", "ct_x", "b"], [], ["a", "b"]),  # named empty: managed ones go, others stay
        (["b", "a"], ["ct_y"], ["b", "a", "ct_y"]),  # external order kept
        (["ct_y", "a"], ["ct_y"], ["ct_y", "a"]),  # already right: the same list
        (["CT_X", "ct_X"], ["ct_x"], ["CT_X", "ct_x"]),  # prefix is case-sensitive
    ],
)
def test_merge_tags_touches_only_prefixed_tags(
    existing: list[str], wanted: list[str] | None, merged: list[str]
) -> None:
    assert merge_tags(existing, wanted, "ct_") == merged
    # Idempotent: merging again changes nothing.
    assert merge_tags(merged, wanted, "ct_") == merged
