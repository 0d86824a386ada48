"""One rule for email addresses and CleverTap IDs, whichever side they arrive from."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.identity.schemas import clean_clevertap_id, valid_email


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a@b.co", "a@b.co"),
        ("ana@example.com", "ana@example.com"),
        (" a.b+c@sub.example.org ", "a.b+c@sub.example.org"),
        ("  Ana@Example.COM\n", "Ana@Example.COM"),
        ("gou****@mailmodo.com", "gou****@mailmodo.com"),  # Mailmodo's masked addresses
        ("a@b", None),  # no domain suffix
        ("@b.co", None),
        ("ana@", None),
        ("no-at-sign", None),
        ("a@@b.co", None),
        ("a@b@c.com", None),
        ("with space@example.com", None),
        ("a<b>@c.co", None),
        ("{{email}}@x.com", None),
        ("${email}@x.com", None),
        ("a\x00b@x.io", None),
        ("a\x01b@x.io", None),
        ("ab@x.io\x7f", None),
        ("x" * 250 + "@b.co", None),
        ("", None),
        (None, None),
        (42, None),
        (["a@b.co"], None),
    ],
)
def test_valid_email(value: Any, expected: str | None) -> None:
    assert valid_email(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("__abc", "__abc"),
        ("  -h123 ", "-h123"),
        (42, "42"),
        (123456.0, "123456"),
        (1.5, "1.5"),
        (float("nan"), None),
        (float("inf"), None),
        (False, None),
        (True, None),
        (None, None),
        ("", None),
        ("   ", None),
        ("NONE", None),
        ("null", None),
        ("undefined", None),
        ("N/A", None),
        ("nan", None),
        ("true", None),
        ("0", None),
        ("-1", None),
        ("has space", None),
        ("x" * 257, None),
        ("{{Profile.id}}", None),
        ("{{ data.clevertap_id }}", None),
        ("${clevertap_id}", None),
        ("{% raw %}", None),
        ("@{objectId}", None),
        ("%%objectId%%", None),
        ("[[objectId]]", None),
        (["__a"], None),
        ({"a": 1}, None),
    ],
)
def test_clean_clevertap_id(value: Any, expected: str | None) -> None:
    assert clean_clevertap_id(value) == expected


@given(st.text())
def test_what_is_accepted_is_stored_as_is(text: str) -> None:
    # cleaning is idempotent: a value accepted once is accepted again unchanged
    email = valid_email(text)
    if email is not None:
        assert valid_email(email) == email
        assert email == email.strip()
    clevertap_id = clean_clevertap_id(text)
    if clevertap_id is not None:
        assert clean_clevertap_id(clevertap_id) == clevertap_id
        assert not any(ch.isspace() for ch in clevertap_id)
