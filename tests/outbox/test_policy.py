"""Classifying upstream answers and the retry delays (pure, no database).

What an outcome does to a delivery's state: ``tests/outbox/test_transitions.py``."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.clock import ManualClock, jitter
from app.outbox.models import AttemptOutcome
from app.outbox.policy import (
    MAX_RETRY_AFTER,
    REASON_LIMIT,
    RetryPolicy,
    classify_error,
    classify_mailmodo,
    classify_upload,
)
from app.upstream import MAX_KEPT_BODY, UpstreamResponse, UpstreamTimeout, UpstreamUnreachable

SEED = 424242


@pytest.fixture(autouse=True)
def seeded(clock: ManualClock) -> None:
    """Jitter draws start from SEED (through the one clock every module reads)."""
    clock.reseed(SEED)


def draws(*delays: float) -> list[float]:
    """What ``jitter`` gives for ``delays`` right after seeding with SEED."""
    rng = random.Random(SEED)
    return [d * rng.uniform(0.8, 1.2) for d in delays]


def resp(
    status: int, body: Any = None, *, retry_after: float | None = None, raw: str | None = None
) -> UpstreamResponse:
    text = raw if raw is not None else ("" if body is None else orjson.dumps(body).decode())
    try:
        parsed = orjson.loads(text) if text else None
    except orjson.JSONDecodeError:
        parsed = None
    return UpstreamResponse(
        status_code=status, text=text, json=parsed, duration_ms=12.5, retry_after=retry_after
    )


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
    result = classify_error(error, "Mailmodo")
    assert result.kind is AttemptOutcome.RETRY
    assert result.status_code is None
    assert result.response_body is None
    assert result.retry_after is None
    assert result.duration_ms == error.duration_ms
    assert result.reason == f"Mailmodo {what}: {error}"


# --- RetryPolicy ----------------------------------------------------------------------------


def test_empty_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one delay"):
        RetryPolicy([])


def test_schedule_gives_jittered_delays_then_none() -> None:
    policy = RetryPolicy([5, 30, 120])
    assert policy.max_attempts == 4
    expected = draws(5, 30, 120)
    got = [policy.retry_delay(n, None) for n in (1, 2, 3)]
    assert got == pytest.approx(expected)
    assert policy.retry_delay(4, None) is None
    assert policy.retry_delay(40, None) is None


def test_retry_after_wins_only_when_longer() -> None:
    policy = RetryPolicy([5, 30])
    [first] = draws(5)
    assert policy.retry_delay(1, 1.0) == pytest.approx(first)  # shorter: backoff kept
    assert policy.retry_delay(1, 90.0) == 90.0
    assert policy.retry_delay(1, 10 * MAX_RETRY_AFTER) == MAX_RETRY_AFTER
    assert policy.retry_delay(3, 90.0) is None  # past the schedule even with Retry-After


def test_zero_delays_are_not_jittered() -> None:
    policy = RetryPolicy([0, 0])
    assert policy.retry_delay(1, None) == 0.0
    assert jitter(0) == 0.0
    assert jitter(-1) == 0.0


@given(
    schedule=st.lists(st.floats(min_value=0.001, max_value=1e5), min_size=1, max_size=12),
    done=st.integers(min_value=1, max_value=13),
)
def test_every_delay_stays_within_20_percent(schedule: list[float], done: int) -> None:
    policy = RetryPolicy(schedule)
    delay = policy.retry_delay(done, None)
    if done > len(schedule):
        assert delay is None
    else:
        assert delay is not None
        base = schedule[done - 1]
        assert base * 0.8 <= delay <= base * 1.2


def test_deferral_delay_backs_off_and_caps() -> None:
    policy = RetryPolicy([1], rate_limit_base=5, rate_limit_cap=600)
    expected = draws(5, 10, 20, 40, 600, 600)
    got = [policy.deferral_delay(n, None) for n in (1, 2, 3, 4, 8, 10_000)]
    assert got == pytest.approx(expected)


def test_deferral_delay_honours_retry_after_with_a_cap() -> None:
    policy = RetryPolicy([1])
    assert policy.deferral_delay(3, 2.0) == 2.0  # even shorter than the back-off
    assert policy.deferral_delay(1, 1e9) == MAX_RETRY_AFTER


# --- CleverTap per-record answers --------------------------------------------------------------

SENT = [{"type": "event", "evtName": f"E{i}", "evtData": {}, "objectId": f"o{i}"} for i in range(3)]


def test_upload_codes_sent_as_text_are_still_permanent() -> None:
    answer = {
        "status": "partial",
        "processed": 2,
        "unprocessed": [{"code": "509", "error": "Skipped record number : 2"}],
    }
    kinds = [o.kind for o in classify_upload(resp(200, answer), SENT)]
    assert kinds == [AttemptOutcome.DELIVERED, AttemptOutcome.FAILED, AttemptOutcome.DELIVERED]


def test_upload_skipped_records_we_cannot_identify_are_resent_not_lost() -> None:
    answer = {"status": "partial", "processed": 2, "unprocessed": [{"code": 555, "error": "?"}]}
    kinds = [o.kind for o in classify_upload(resp(200, answer), SENT)]
    assert kinds == [AttemptOutcome.RETRY] * 3


def test_upload_counts_that_add_up_need_no_identification() -> None:
    answer = {
        "status": "partial",
        "processed": 2,
        "unprocessed": [{"code": 512, "error": "x", "record": SENT[0]}],
    }
    kinds = [o.kind for o in classify_upload(resp(200, answer), SENT)]
    assert kinds == [AttemptOutcome.FAILED, AttemptOutcome.DELIVERED, AttemptOutcome.DELIVERED]


def test_upload_processed_count_short_without_unprocessed_entries_resends() -> None:
    answer = {"status": "partial", "processed": 1, "unprocessed": []}
    kinds = [o.kind for o in classify_upload(resp(200, answer), SENT)]
    assert kinds == [AttemptOutcome.RETRY] * 3
