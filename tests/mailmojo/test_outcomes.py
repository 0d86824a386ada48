"""What Mailmojo's answers mean: the contact read (contact, none, unclear, generic classes) and
the write."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from app.mailmojo.bodies import Contact
from app.mailmojo.outcomes import classify_contact_read, classify_write, parse_contact, unchanged
from app.upstream import AttemptOutcome, Outcome, UpstreamResponse


def resp(status: int, body: Any = None, retry_after: float | None = None) -> UpstreamResponse:
    text = "" if body is None else orjson.dumps(body).decode()
    return UpstreamResponse(status, text, body, 12.5, retry_after)


def test_a_contact_is_read_with_its_tags_lists_and_status() -> None:
    got = classify_contact_read(
        resp(
            200,
            {
                "email": "Ann@Example.com",
                "first_name": "Ann",
                "name": "Ann Lee",
                "tags": ["a", "ct_b"],
                "list_associations": [{"list_id": 42, "status": "subscribed"}, {"x": 1}],
                "status": "subscribed",
            },
        ),
        "ann@example.com",
    )
    assert got == Contact(
        fields={"first_name": "Ann", "last_name": None, "phone": None},
        tags=["a", "ct_b"],
        lists=frozenset({"42"}),
        status="subscribed",
    )


def test_missing_tags_and_lists_read_as_none_and_unknown() -> None:
    contact = parse_contact({"email": "a@x.io", "tags": None}, "a@x.io")
    assert contact is not None
    assert (contact.tags, contact.lists) == ([], None)


def test_404_is_no_such_contact() -> None:
    assert classify_contact_read(resp(404, {"detail": "Not found."}), "a@x.io") is None


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, AttemptOutcome.AUTH_ERROR),
        (403, AttemptOutcome.AUTH_ERROR),
        (429, AttemptOutcome.RATE_LIMITED),
        (408, AttemptOutcome.RETRY),
        (500, AttemptOutcome.RETRY),
        (502, AttemptOutcome.RETRY),
        (400, AttemptOutcome.FAILED),
        (405, AttemptOutcome.FAILED),
        (204, AttemptOutcome.RETRY),  # a 2xx without a contact: unclear
    ],
)
def test_other_answers_to_the_read_end_the_attempt(status: int, kind: AttemptOutcome) -> None:
    got = classify_contact_read(resp(status, {"detail": "why"}, retry_after=3), "a@x.io")
    assert isinstance(got, Outcome)
    assert got.kind is kind
    assert got.status_code == status
    assert got.reason is not None
    if kind is AttemptOutcome.RATE_LIMITED:
        assert got.retry_after == 3


def test_the_reason_keeps_mailmojos_message() -> None:
    got = classify_contact_read(resp(400, {"detail": "Enter a valid email address."}), "x")
    assert isinstance(got, Outcome)
    assert got.reason == "Mailmojo refused: HTTP 400: Enter a valid email address."


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_a_2xx_write_is_delivered_with_which_write_it_was(status: int) -> None:
    got = classify_write(resp(status), "subscribe")
    assert (got.kind, got.ref, got.reason) == (AttemptOutcome.DELIVERED, "subscribe", None)


def test_a_write_refused_is_failed_with_the_reason() -> None:
    got = classify_write(resp(422, {"email": ["Enter a valid email address."]}), "update")
    assert got.kind is AttemptOutcome.FAILED
    assert got.reason is not None
    assert "Enter a valid email address." in got.reason


def test_unchanged_is_delivered_on_the_reads_answer() -> None:
    got = unchanged(resp(200, {"email": "a@x.io"}))
    assert (got.kind, got.ref, got.status_code) == (AttemptOutcome.DELIVERED, "unchanged", 200)
