"""Mailmodo's answers as outcomes (pure, no HTTP): success:false on a 2xx, the generic
taxonomy, the contact read before a list sync."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from app.mailmodo.outcomes import (
    classify_contact_read,
    classify_failure,
    classify_mailmodo,
)
from app.upstream import (
    MAX_KEPT_BODY,
    REASON_LIMIT,
    AttemptOutcome,
    Outcome,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from tests.answers import resp

# --- classify_mailmodo ----------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202])
def test_2xx_success_is_delivered_with_ref(status: int) -> None:
    body = {"success": True, "message": "Email scheduled successfully", "ref": "be2b-1"}
    result = classify_mailmodo(resp(status, body))
    assert result.kind is AttemptOutcome.DELIVERED
    assert result.ref == "be2b-1"
    assert result.reason is None
    assert result.status_code == status
    assert result.duration_ms == 12.5
    assert result.response_body == orjson.dumps(body).decode()


@pytest.mark.parametrize(
    ("body", "raw", "ref"),
    [
        ({"success": True, "message": "journey aborted"}, None, None),
        ({"success": True, "ref": 12345}, None, "12345"),
        (None, "OK", None),
        (None, "", None),
        ([1, 2], None, None),
    ],
    ids=["no-ref", "numeric-ref", "text", "empty", "list"],
)
def test_2xx_without_success_false_is_delivered(
    body: Any, raw: str | None, ref: str | None
) -> None:
    result = classify_mailmodo(resp(200, body, raw=raw))
    assert result.kind is AttemptOutcome.DELIVERED
    assert result.ref == ref


def test_200_success_false_is_failed_with_message() -> None:
    body = {"success": False, "message": "The provided email is not a valid email id"}
    result = classify_mailmodo(resp(200, body))
    assert result.kind is AttemptOutcome.FAILED
    assert result.reason == (
        "Mailmodo refused: HTTP 200: The provided email is not a valid email id"
    )
    assert result.ref is None


def test_400_mailmodo_error_list_is_rendered_in_the_reason() -> None:
    body = {
        "Status": "400",
        "message": "other error message",
        "errors": [
            {"email": "a@example.com", "failure reason": "email is blocked"},
            "plain string error",
        ],
    }
    result = classify_mailmodo(resp(400, body))
    assert result.kind is AttemptOutcome.FAILED
    assert result.reason == (
        "Mailmodo refused: HTTP 400: other error message — errors: "
        "email: a@example.com, failure reason: email is blocked; plain string error"
    )


def test_reason_joins_distinct_message_fields() -> None:
    body = {"error": "error", "message": "Some Internal Error Occurred: 404"}
    result = classify_mailmodo(resp(404, body))
    assert result.reason == "Mailmodo refused: HTTP 404: Some Internal Error Occurred: 404 — error"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("", "(empty body)"), ("<html>Not Found</html>", "<html>Not Found</html>")],
)
def test_reason_falls_back_to_the_text(raw: str, expected: str) -> None:
    result = classify_mailmodo(resp(404, raw=raw))
    assert result.reason == f"Mailmodo refused: HTTP 404: {expected}"


def test_reason_is_bounded() -> None:
    result = classify_mailmodo(resp(400, {"message": "é" * 5000}))
    assert result.reason is not None
    assert len(result.reason.encode()) <= REASON_LIMIT
    text_only = classify_mailmodo(resp(400, raw="x" * 5000))
    assert text_only.reason is not None
    assert len(text_only.reason) < 400  # a non-JSON body contributes at most 300 characters


@pytest.mark.parametrize("status", [400, 404, 405, 409, 410, 413, 422])
def test_other_4xx_fail_for_good(status: int) -> None:
    result = classify_mailmodo(resp(status, {"message": "no"}))
    assert result.kind is AttemptOutcome.FAILED
    assert result.reason == f"Mailmodo refused: HTTP {status}: no"


@pytest.mark.parametrize("status", [401, 403])
def test_401_403_are_auth_errors(status: int) -> None:
    result = classify_mailmodo(resp(status, {"message": "Invalid apiKey"}))
    assert result.kind is AttemptOutcome.AUTH_ERROR
    assert result.reason == f"Mailmodo rejected the credentials: HTTP {status}: Invalid apiKey"


def test_429_is_rate_limited_with_retry_after() -> None:
    result = classify_mailmodo(resp(429, {"message": "slow down"}, retry_after=12.0))
    assert result.kind is AttemptOutcome.RATE_LIMITED
    assert result.retry_after == 12.0
    assert result.reason == "Mailmodo throttled: HTTP 429: slow down"


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504, 520, 599])
def test_408_and_5xx_are_retried_with_retry_after(status: int) -> None:
    result = classify_mailmodo(resp(status, {"message": "down"}, retry_after=7.0))
    assert result.kind is AttemptOutcome.RETRY
    assert result.retry_after == 7.0
    assert result.reason == f"Mailmodo unavailable: HTTP {status}: down"


def test_kept_body_is_truncated_to_2kb_on_a_character_boundary() -> None:
    result = classify_mailmodo(resp(500, raw="€" * 2000))
    assert result.response_body is not None
    kept = result.response_body.encode()
    assert len(kept) <= MAX_KEPT_BODY
    assert result.response_body == "€" * (MAX_KEPT_BODY // 3)


@pytest.mark.parametrize(
    ("error", "what"),
    [
        (UpstreamTimeout("timeout: ReadTimeout", 15000.0), "did not answer in time"),
        (UpstreamUnreachable("ConnectError: refused", 3.0), "unreachable"),
    ],
)
def test_transport_errors_are_retried(error: UpstreamTimeout, what: str) -> None:
    result = classify_failure(error)
    assert result.kind is AttemptOutcome.RETRY
    assert result.status_code is None
    assert result.response_body is None
    assert result.retry_after is None
    assert result.duration_ms == error.duration_ms
    assert result.reason == f"Mailmodo {what}: {error}"


# --- the contact read before a list sync ------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, {"success": True, "data": {"first_name": "Ann"}}, {"first_name": "Ann"}),
        (200, {"success": False, "message": "no"}, {}),
        (404, {"message": "Contact not found"}, {}),
        (400, {"message": "Contact does not exist"}, {}),
        (200, {"success": True}, {}),
    ],
    ids=["contact", "success-false", "404", "not-exist-words", "no-data"],
)
def test_contact_read_gives_the_contact_or_a_clear_none(
    status: int, body: Any, expected: dict[str, Any]
) -> None:
    assert classify_contact_read(resp(status, body)) == expected


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, AttemptOutcome.AUTH_ERROR),
        (429, AttemptOutcome.RATE_LIMITED),
        (503, AttemptOutcome.RETRY),
        (408, AttemptOutcome.RETRY),
        (400, AttemptOutcome.FAILED),
    ],
)
def test_contact_read_that_is_no_answer_ends_the_attempt(status: int, kind: AttemptOutcome) -> None:
    result = classify_contact_read(resp(status, {"message": "x"}))
    assert isinstance(result, Outcome)
    assert result.kind is kind


def test_unreadable_200_contact_read_is_retried() -> None:
    result = classify_contact_read(resp(200, raw="<html>"))
    assert isinstance(result, Outcome)
    assert result.kind is AttemptOutcome.RETRY
    assert result.reason == "Mailmodo's contact read gave no readable contact; retried"
