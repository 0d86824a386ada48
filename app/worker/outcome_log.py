"""The operator's log lines about delivery attempts, worded by what happened.

One line per attempt of a Mailmodo or Mailmojo delivery (``RowDeliverer``, through
``OutboxConsumer.log_outcome``); one line per CleverTap upload request (a batch of
up to 1000 records) plus one per record that failed for good or died. Levels: delivered and
deferrals (rate limit, paused credentials: no attempt used) at info, failures at warning,
dead at error. A pause itself is logged once, when it begins and ends (``pause.PauseGate``),
not on every probe. Lines that wait for another try say when (``next_attempt_at``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import structlog

from app.logging import hot_info
from app.outbox.models import State
from app.outbox.repository import Claimed
from app.outbox.transitions import AttemptChange
from app.upstream import AttemptOutcome, Outcome

log = structlog.get_logger(__name__)


def _when(change: AttemptChange) -> str:
    return change.next_attempt_at.isoformat(timespec="seconds")


def log_attempt(
    upstream: str, row: Claimed, outcome: Outcome, change: AttemptChange, *, lease_kept: bool
) -> None:
    """The line of one attempt of a row (or of one record of an upload that did not go)."""
    fields: dict[str, Any] = {
        "upstream": upstream,
        "delivery_id": row.id,
        "operation": row.operation,
        "target": row.target,
        "attempt": change.attempt_number,
        "status_code": outcome.status_code,
        "outcome": outcome.kind.value,
        "state": change.state.value,
        "duration_ms": round(outcome.duration_ms, 1),
    }
    if not lease_kept:
        log.warning(
            "lease lost before the result was written; another worker owns the row", **fields
        )
    elif change.state is State.DELIVERED:
        hot_info(log, "delivered", **fields)
    elif change.state is State.DEAD:
        log.error("delivery dead: no attempt left", reason=change.reason, **fields)
    elif change.state is State.FAILED:
        log.warning("delivery failed for good", reason=outcome.reason, **fields)
    elif outcome.kind is AttemptOutcome.AUTH_ERROR:
        log.info(
            "credentials rejected; deferred while the upstream is paused",
            next_attempt_at=_when(change),
            **fields,
        )
    elif outcome.kind is AttemptOutcome.RATE_LIMITED:
        log.info("rate limited; deferred", next_attempt_at=_when(change), **fields)
    else:
        log.warning(
            "delivery attempt failed; will retry",
            reason=outcome.reason,
            next_attempt_at=_when(change),
            **fields,
        )


def log_upload(
    upstream: str,
    results: Sequence[tuple[Claimed, Outcome]],
    changes: Sequence[AttemptChange],
    *,
    kept: int,
) -> None:
    """One line for a whole upload request, worded by its worst result, then one line per
    record that failed for good or died (their reasons differ record by record)."""
    states = Counter(change.state.value for change in changes)
    outcomes = Counter(outcome.kind.value for _, outcome in results)
    fields: dict[str, Any] = {
        "upstream": upstream,
        "records": len(results),
        "first_delivery_id": results[0][0].id,
        "last_delivery_id": results[-1][0].id,
        "status_code": next((o.status_code for _, o in results if o.status_code), None),
        "states": dict(states),
        "lease_lost": len(results) - kept,
    }
    pending = [c for c in changes if c.state is State.PENDING]
    if pending:
        fields["next_attempt_at"] = _when(min(pending, key=lambda c: c.next_attempt_at))
    delivered = states.get(State.DELIVERED.value, 0)
    if delivered == len(results):
        log.info("uploaded to CleverTap", **fields)
    elif outcomes.get(AttemptOutcome.AUTH_ERROR.value):
        log.info("upload deferred: credentials rejected while the upstream is paused", **fields)
    elif outcomes.get(AttemptOutcome.RATE_LIMITED.value) == len(results):
        log.info("upload rate limited; deferred", **fields)
    elif states.get(State.DEAD.value):
        log.error("upload not delivered: some records are dead", **fields)
    else:
        reason = next((o.reason for _, o in results if o.kind is not AttemptOutcome.DELIVERED), "")
        log.warning("upload not fully delivered", delivered=delivered, reason=reason, **fields)
    for (row, outcome), change in zip(results, changes, strict=True):
        if change.state in (State.FAILED, State.DEAD):
            log_attempt(upstream, row, outcome, change, lease_kept=True)
