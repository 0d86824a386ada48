"""How an upstream answer is classified into an outcome, and the retry delays.

What an outcome does to a delivery's state is decided in ``app.outbox.transitions``.

Classes of answer (both upstreams):

==========================  ===================================================
2xx and not ``success:false`` delivered
``success: false``, 4xx      failed for good, reason kept
401 / 403                    credentials wrong: upstream paused, no attempt used
429                          rate limited: deferred, no attempt used
408, 5xx, timeout, network   retried on the schedule, honouring ``Retry-After``
==========================  ===================================================
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from app.clock import jitter
from app.outbox.models import AttemptOutcome
from app.upstream import (
    MAX_KEPT_BODY,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnreachable,
    truncate_utf8,
)

#: Longest wait we accept from a Retry-After header, so a bad header cannot park work for days.
MAX_RETRY_AFTER = 6 * 3600.0
REASON_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: AttemptOutcome
    status_code: int | None
    reason: str | None
    duration_ms: float
    response_body: str | None = None
    ref: str | None = None
    retry_after: float | None = None


def _message(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    parts: list[str] = []
    for key in ("message", "error", "Message", "detail"):
        value = body.get(key)
        if isinstance(value, str) and value and value not in parts:
            parts.append(value)
    errors = body.get("errors")
    if isinstance(errors, list) and errors:
        rendered = []
        for err in errors[:5]:
            if isinstance(err, dict):
                rendered.append(", ".join(f"{k}: {v}" for k, v in err.items()))
            else:
                rendered.append(str(err))
        parts.append("errors: " + "; ".join(rendered))
    return " — ".join(parts) if parts else None


def _reason(resp: UpstreamResponse, prefix: str) -> str:
    message = _message(resp.json) or resp.text.strip()[:300] or "(empty body)"
    return truncate_utf8(f"{prefix} HTTP {resp.status_code}: {message}", REASON_LIMIT)


def classify_mailmodo(resp: UpstreamResponse) -> Outcome:
    """Mailmodo answers 200 with ``success: false`` for some failures: always check it."""
    code = resp.status_code
    body = resp.json
    common: dict[str, Any] = {
        "status_code": code,
        "duration_ms": resp.duration_ms,
        "response_body": resp.kept_body,
    }
    if 200 <= code < 300:
        if isinstance(body, dict) and body.get("success") is False:
            return Outcome(
                AttemptOutcome.FAILED, reason=_reason(resp, "Mailmodo refused:"), **common
            )
        ref = body.get("ref") if isinstance(body, dict) else None
        return Outcome(
            AttemptOutcome.DELIVERED,
            reason=None,
            ref=str(ref) if ref is not None else None,
            **common,
        )
    return classify_http_error(resp, "Mailmodo", common)


def classify_http_error(resp: UpstreamResponse, upstream: str, common: dict[str, Any]) -> Outcome:
    code = resp.status_code
    if code in (401, 403):
        return Outcome(
            AttemptOutcome.AUTH_ERROR,
            reason=_reason(resp, f"{upstream} rejected the credentials:"),
            **common,
        )
    if code == 429:
        return Outcome(
            AttemptOutcome.RATE_LIMITED,
            reason=_reason(resp, f"{upstream} throttled:"),
            retry_after=resp.retry_after,
            **common,
        )
    if code == 408 or code >= 500:
        return Outcome(
            AttemptOutcome.RETRY,
            reason=_reason(resp, f"{upstream} unavailable:"),
            retry_after=resp.retry_after,
            **common,
        )
    return Outcome(AttemptOutcome.FAILED, reason=_reason(resp, f"{upstream} refused:"), **common)


def classify_error(exc: UpstreamError, upstream: str) -> Outcome:
    if isinstance(exc, UpstreamTimeout):
        what = "did not answer in time"
    elif isinstance(exc, UpstreamUnreachable):
        what = "unreachable"
    else:
        what = "gave an answer that could not be read"
    return Outcome(
        AttemptOutcome.RETRY,
        status_code=None,
        duration_ms=exc.duration_ms,
        reason=truncate_utf8(f"{upstream} {what}: {exc}", REASON_LIMIT),
    )


class RetryPolicy:
    """Backoff with jitter on a fixed schedule; past its last delay an item is dead.

    Delays only: ``transitions.after_attempt`` turns them into a change of state.
    """

    def __init__(
        self,
        schedule: Sequence[float],
        *,
        pause_probe_seconds: float = 60.0,
        rate_limit_base: float = 5.0,
        rate_limit_cap: float = 600.0,
    ) -> None:
        if not schedule:
            raise ValueError("the retry schedule needs at least one delay")
        self.schedule = tuple(schedule)
        self.pause_probe_seconds = pause_probe_seconds
        self.rate_limit_base = rate_limit_base
        self.rate_limit_cap = rate_limit_cap

    @property
    def max_attempts(self) -> int:
        return len(self.schedule) + 1

    def retry_delay(self, attempts_done: int, retry_after: float | None) -> float | None:
        """Seconds until the next try after ``attempts_done`` attempts; None means dead."""
        if attempts_done > len(self.schedule):
            return None
        delay = jitter(self.schedule[attempts_done - 1])
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
        return delay

    def deferral_delay(self, deferrals_done: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER)
        base = self.rate_limit_base * (2 ** min(deferrals_done - 1, 16))
        return jitter(min(base, self.rate_limit_cap))


#: CleverTap per-record codes that will fail the same way however often they are sent.
CLEVERTAP_PERMANENT_CODES = frozenset(
    {509, 512, 513, 514, 515, 516, 517, 518, 519, 520, 522, 523, 524, 525, 526, 528}
    | set(range(530, 536))
)
_RECORD_NUMBER = re.compile(r"Skipped record number\s*:\s*(\d+)", re.IGNORECASE)


def classify_upload(resp: UpstreamResponse, sent: Sequence[dict[str, Any]]) -> list[Outcome]:
    """One outcome per sent record, in order, from one ``/1/upload`` answer.

    CleverTap answers 200 with ``unprocessed`` records it skipped; each is matched to what we
    sent by ``Skipped record number : N`` (1-based) or, failing that, by its echoed record.
    """
    common: dict[str, Any] = {"status_code": resp.status_code, "duration_ms": resp.duration_ms}
    body = resp.json
    if resp.status_code != 200:
        outcome = classify_http_error(resp, "CleverTap", common | {"response_body": resp.kept_body})
        return [outcome] * len(sent)
    if not isinstance(body, dict) or not isinstance(body.get("unprocessed", []), list):
        retry = Outcome(
            AttemptOutcome.RETRY,
            reason=_reason(resp, "CleverTap gave an answer we cannot read:"),
            response_body=resp.kept_body,
            **common,
        )
        return [retry] * len(sent)
    unprocessed: list[Any] = body.get("unprocessed") or []
    status = str(body.get("status", "")).lower()
    if status == "fail" and not unprocessed and not body.get("processed"):
        retry = Outcome(
            AttemptOutcome.RETRY,
            reason=_reason(resp, "CleverTap processed nothing:"),
            response_body=resp.kept_body,
            **common,
        )
        return [retry] * len(sent)
    delivered = Outcome(AttemptOutcome.DELIVERED, reason=None, **common)
    outcomes: list[Outcome] = [delivered] * len(sent)
    taken: set[int] = set()
    for item in unprocessed:
        if not isinstance(item, dict):
            continue
        index = _unprocessed_index(item, sent, taken)
        if index is None:
            continue
        taken.add(index)
        code = _int_code(item.get("code"))
        error = str(item.get("error") or item.get("status") or "unprocessed")
        reason = truncate_utf8(f"CleverTap skipped the record: {code}: {error}", REASON_LIMIT)
        kept = truncate_utf8(orjson.dumps(item).decode(), MAX_KEPT_BODY)
        kind = AttemptOutcome.FAILED if code in CLEVERTAP_PERMANENT_CODES else AttemptOutcome.RETRY
        outcomes[index] = Outcome(kind, reason=reason, response_body=kept, **common)
    processed = body.get("processed")
    unidentified = len(sent) - len(taken) - (processed if isinstance(processed, int) else 0)
    if unidentified > 0 and isinstance(processed, int):
        # CleverTap skipped records we cannot tell apart from the processed ones: resend the
        # unidentified rest rather than risk losing one (at least once, never silently lost).
        resend = Outcome(
            AttemptOutcome.RETRY,
            reason=f"CleverTap skipped {len(unprocessed) - len(taken)} record(s) it did not "
            "identify; resent with the rest of the batch",
            response_body=resp.kept_body,
            **common,
        )
        outcomes = [resend if i not in taken else o for i, o in enumerate(outcomes)]
    return outcomes


def _int_code(value: Any) -> int | None:
    """CleverTap's per-record code, whether sent as a number or as text."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _unprocessed_index(
    item: dict[str, Any], sent: Sequence[dict[str, Any]], taken: set[int]
) -> int | None:
    match = _RECORD_NUMBER.search(str(item.get("error") or ""))
    if match:
        index = int(match.group(1)) - 1
        if 0 <= index < len(sent) and index not in taken:
            return index
    echoed = item.get("record")
    if isinstance(echoed, dict):
        for i, record in enumerate(sent):
            if i not in taken and record == echoed:
                return i
    return None
