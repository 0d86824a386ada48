"""What CleverTap's ``/1/upload`` answers mean for each record sent: the only place that knows
its status codes, its per-record codes and how a skipped record is matched to what we sent."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import orjson

from app.upstream import (
    MAX_KEPT_BODY,
    REASON_LIMIT,
    AttemptOutcome,
    Outcome,
    UpstreamError,
    UpstreamResponse,
    answer_reason,
    classify_error,
    classify_http_error,
    truncate_utf8,
)

NAME = "CleverTap"

#: CleverTap per-record codes that will fail the same way however often they are sent.
CLEVERTAP_PERMANENT_CODES = frozenset(
    {509, 512, 513, 514, 515, 516, 517, 518, 519, 520, 522, 523, 524, 525, 526, 528}
    | set(range(530, 536))
)
_RECORD_NUMBER = re.compile(r"Skipped record number\s*:\s*(\d+)", re.IGNORECASE)


def classify_failure(exc: UpstreamError) -> Outcome:
    """No answer from CleverTap (timeout, network, unreadable): retried."""
    return classify_error(exc, NAME)


def refused_whole_batch(resp: UpstreamResponse) -> bool:
    """A refusal of the whole request (400, 413) that may be one bad record's fault: the
    uploader bisects the batch so that record fails alone."""
    return resp.status_code in (400, 413)


def classify_upload(resp: UpstreamResponse, sent: Sequence[dict[str, Any]]) -> list[Outcome]:
    """One outcome per sent record, in order, from one ``/1/upload`` answer.

    CleverTap answers 200 with ``unprocessed`` records it skipped; each is matched to what we
    sent by ``Skipped record number : N`` (1-based) or, failing that, by its echoed record.
    """
    common: dict[str, Any] = {"status_code": resp.status_code, "duration_ms": resp.duration_ms}
    body = resp.json
    if resp.status_code != 200:
        outcome = classify_http_error(resp, NAME, common | {"response_body": resp.kept_body})
        return [outcome] * len(sent)
    if not isinstance(body, dict) or not isinstance(body.get("unprocessed", []), list):
        retry = Outcome(
            AttemptOutcome.RETRY,
            reason=answer_reason(resp, "CleverTap gave an answer we cannot read:"),
            response_body=resp.kept_body,
            **common,
        )
        return [retry] * len(sent)
    unprocessed: list[Any] = body.get("unprocessed") or []
    status = str(body.get("status", "")).lower()
    if status == "fail" and not unprocessed and not body.get("processed"):
        retry = Outcome(
            AttemptOutcome.RETRY,
            reason=answer_reason(resp, "CleverTap processed nothing:"),
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
