"""THE delivery state machine: the states, every edge between them, one function per edge.

Each function returns a typed change: the states it applies from and what it sets. It never
touches the database; repositories apply a change under its guard — the lease token for a
worker's own rows, the change's ``from_states`` (plus "no live lease" for the operator) for
everyone else — so two writers racing on one row never both win. Nothing else in ``app/``
writes a delivery's ``state``.

=================  =======================================  ===============================
edge               from                                     to
=================  =======================================  ===============================
admit              (a new row)                              pending, parked, dropped, failed
attempt            pending, leased by the worker            delivered, failed, dead, pending
release_lease      pending, leased by the worker            pending (due now, unleased)
reclaim_lease      pending, leased by a gone worker         pending (due now, unleased)
skip               pending, leased by the worker            dropped (not sent: an echo)
resume_deferred    pending, held back by a 401/403          pending (due now)
release_parked     parked                                   pending
expire_parked      parked                                   dead
retry              failed, dead, cancelled, dropped,        pending (fresh schedule)
                   parked, pending
resend             delivered (retry with force)             pending (fresh schedule)
replay             failed, dead, cancelled, dropped,        pending (fresh schedule)
                   parked, pending
cancel             pending, parked                          cancelled
purge              delivered, failed, dead, cancelled,      (the row is deleted)
                   dropped, parked
=================  =======================================  ===============================

A worker's claim is not an edge: it leases a pending row (``repository.claim_due``) without
changing its state; ``release_lease`` and ``attempt`` end the lease. A row with a live lease
is always pending, since every edge out of pending clears the lease or is refused in flight.
``reclaim_lease`` is ``release_lease`` done by another process for a worker that is gone (its
heartbeat stale or its process dead, ``app.system.recovery``), guarded by ``leased_by``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import NamedTuple

from app.outbox.models import State
from app.outbox.policy import RetryPolicy
from app.outbox.schemas import Claimed, NewDelivery
from app.upstream import AttemptOutcome, Outcome

__all__ = [
    "EDGES",
    "TERMINAL_STATES",
    "Admission",
    "AttemptChange",
    "Cancellation",
    "Change",
    "DeferralResume",
    "Edge",
    "EdgeRule",
    "LeaseReclaim",
    "LeaseRelease",
    "OperatorReplay",
    "ParkedExpiry",
    "ParkedRelease",
    "Purge",
    "Skip",
    "State",
    "admit",
    "after_attempt",
    "cancel",
    "expire_parked",
    "purge",
    "reclaim_lease",
    "release_lease",
    "release_parked",
    "replay",
    "resume_deferred",
    "retry",
    "skip",
]


class Edge(StrEnum):
    ADMIT = "admit"
    ATTEMPT = "attempt"
    RELEASE_LEASE = "release_lease"
    RECLAIM_LEASE = "reclaim_lease"
    SKIP = "skip"
    RESUME_DEFERRED = "resume_deferred"
    RELEASE_PARKED = "release_parked"
    EXPIRE_PARKED = "expire_parked"
    RETRY = "retry"
    RESEND = "resend"
    REPLAY = "replay"
    CANCEL = "cancel"
    PURGE = "purge"


@dataclass(frozen=True, slots=True)
class EdgeRule:
    """Where an edge may start and where it may end."""

    #: Empty for ``admit``: the row does not exist yet.
    from_states: frozenset[State]
    #: Empty for ``purge``: the row is deleted.
    to_states: frozenset[State]


_S = State
#: Nothing can be on the wire for these; pending and parked ones are re-scheduled as well.
_REPLAYABLE = frozenset({_S.FAILED, _S.DEAD, _S.CANCELLED, _S.DROPPED, _S.PARKED, _S.PENDING})
#: Pending items may be on the wire: they are cancelled first, then purged.
_PURGEABLE = frozenset({_S.DELIVERED, _S.FAILED, _S.DEAD, _S.CANCELLED, _S.DROPPED, _S.PARKED})

#: The allowed-from table: no other edge exists (``tests/outbox/test_transitions.py``).
EDGES: Mapping[Edge, EdgeRule] = MappingProxyType(
    {
        Edge.ADMIT: EdgeRule(
            frozenset(), frozenset({_S.PENDING, _S.PARKED, _S.DROPPED, _S.FAILED})
        ),
        Edge.ATTEMPT: EdgeRule(
            frozenset({_S.PENDING}),
            frozenset({_S.DELIVERED, _S.FAILED, _S.DEAD, _S.PENDING}),
        ),
        Edge.RELEASE_LEASE: EdgeRule(frozenset({_S.PENDING}), frozenset({_S.PENDING})),
        Edge.RECLAIM_LEASE: EdgeRule(frozenset({_S.PENDING}), frozenset({_S.PENDING})),
        Edge.SKIP: EdgeRule(frozenset({_S.PENDING}), frozenset({_S.DROPPED})),
        Edge.RESUME_DEFERRED: EdgeRule(frozenset({_S.PENDING}), frozenset({_S.PENDING})),
        Edge.RELEASE_PARKED: EdgeRule(frozenset({_S.PARKED}), frozenset({_S.PENDING})),
        Edge.EXPIRE_PARKED: EdgeRule(frozenset({_S.PARKED}), frozenset({_S.DEAD})),
        Edge.RETRY: EdgeRule(_REPLAYABLE, frozenset({_S.PENDING})),
        Edge.RESEND: EdgeRule(frozenset({_S.DELIVERED}), frozenset({_S.PENDING})),
        Edge.REPLAY: EdgeRule(_REPLAYABLE, frozenset({_S.PENDING})),
        Edge.CANCEL: EdgeRule(frozenset({_S.PENDING, _S.PARKED}), frozenset({_S.CANCELLED})),
        Edge.PURGE: EdgeRule(_PURGEABLE, frozenset()),
    }
)

#: States no edge but an operator's (retry, resend, replay, purge) leaves.
TERMINAL_STATES = frozenset({_S.DELIVERED, _S.FAILED, _S.DEAD, _S.DROPPED, _S.CANCELLED})

REPLAYED_REASON = "replayed by operator"
CANCELLED_REASON = "cancelled by operator"


# -- the changes ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """What every change says: its edge, the states it applies from, the state it sets."""

    edge: Edge
    from_states: frozenset[State]
    #: None only for ``purge``, which deletes the row.
    state: State | None


class Admission(NamedTuple):
    """A new row's state, CleverTap ID, reason, due time and finish time (``admit``).

    A tuple, not a dataclass: one is built per delivery on the ingest hot path.
    """

    state: State
    clevertap_id: str | None
    reason: str | None
    next_attempt_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptChange(Change):
    """Every lifecycle column of a leased row after one attempt, and the attempt's number.

    Complete on purpose (unchanged columns carry the claimed values), so one statement with
    the same columns applies a whole upload batch.
    """

    state: State
    attempt_number: int
    attempts: int
    deferrals: int
    next_attempt_at: datetime
    reason: str | None
    upstream_ref: str | None
    finished_at: datetime | None
    last_status_code: int | None
    updated_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseRelease(Change):
    """A leased row given back unsent: unleased and due at ``updated_at``."""

    state: State
    updated_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseReclaim(Change):
    """Rows leased by a gone worker: unleased and due at ``updated_at``, no attempt used (the
    call may or may not have reached the upstream: at least once)."""

    state: State
    updated_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Skip(Change):
    """A leased row finished unsent, with the reason: sending it would only echo back what
    the other system just told us (``app.consent``)."""

    state: State
    reason: str
    updated_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class DeferralResume(Change):
    """Rows held back by a credentials pause become due at ``updated_at``."""

    state: State
    updated_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class ParkedRelease(Change):
    """Parked rows become due now; the applier sets the CleverTap ID just learnt."""

    state: State
    reason: None
    updated_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class ParkedExpiry(Change):
    state: State
    reason: str
    updated_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorReplay(Change):
    """Due now on a fresh schedule: attempts and deferrals start again from zero."""

    state: State
    reason: str
    updated_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancellation(Change):
    state: State
    reason: str
    updated_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Purge(Change):
    """Deletes the row (and its attempts); ``state`` is None."""

    state: None


# -- one function per edge --------------------------------------------------------------------

_ADMITTED = EDGES[Edge.ADMIT].to_states
_FINISHED_AT_ADMISSION = frozenset({State.DROPPED, State.FAILED})
# Module constants: ``State.X`` is an enum class attribute look-up (~80 ns) per use, and
# ``admit`` runs once per new delivery on the ingest hot path.
_PENDING, _PARKED, _DROPPED = State.PENDING, State.PARKED, State.DROPPED
_DROP_REASON = "no CleverTap ID is known for this email (BRIDGE_UNRESOLVED_IDENTITY=drop)"


def admit(d: NewDelivery, known: Mapping[str, str], now: datetime) -> Admission:
    """The first state of a new row (see ``NewDelivery``): as asked, or — for an event that
    arrived without a CleverTap ID — resolved by email, sent by email, dropped or parked."""
    due = d.next_attempt_at or now
    if d.identity_policy is None or d.clevertap_id is not None:
        state = d.state
        if state is _PENDING:
            return Admission(state, d.clevertap_id, d.reason, due, None)
        if state not in _ADMITTED:
            raise ValueError(f"a new delivery cannot start {state.value}")
        finished = now if state in _FINISHED_AT_ADMISSION else None
        return Admission(state, d.clevertap_id, d.reason, due, finished)
    if d.email and d.email in known:
        return Admission(_PENDING, known[d.email], None, due, None)
    if d.identity_policy == "email" and d.email:
        return Admission(_PENDING, None, None, due, None)
    if d.identity_policy == "drop" or not d.email:
        return Admission(_DROPPED, None, _DROP_REASON, due, now)
    until = d.park_until or now
    reason = f"waiting for a CleverTap ID for this email until {until.isoformat()}"
    return Admission(_PARKED, None, reason, until, None)


_ATTEMPT_FROM = EDGES[Edge.ATTEMPT].from_states


def after_attempt(
    claimed: Claimed, outcome: Outcome, now: datetime, policy: RetryPolicy
) -> AttemptChange:
    """A leased row's fate after one call: delivered, failed, dead, or pending again
    (rate limits and credential pauses defer without using an attempt)."""
    kind = outcome.kind
    attempts, deferrals = claimed.attempts, claimed.deferrals
    # Final states keep "now" as the due time, not the lease deadline, which would read as a
    # next attempt; pending states set their real due time.
    due: datetime = now
    finished: datetime | None = now
    reason = outcome.reason
    ref = claimed.upstream_ref
    if kind is AttemptOutcome.DELIVERED:
        state, attempts, ref, reason = State.DELIVERED, attempts + 1, outcome.ref, None
    elif kind is AttemptOutcome.FAILED:
        state, attempts = State.FAILED, attempts + 1
    elif kind is AttemptOutcome.RATE_LIMITED or kind is AttemptOutcome.AUTH_ERROR:
        deferrals += 1
        delay = (
            policy.deferral_delay(deferrals, outcome.retry_after)
            if kind is AttemptOutcome.RATE_LIMITED
            else policy.pause_probe_seconds
        )
        state, due, finished = State.PENDING, now + timedelta(seconds=delay), None
    else:
        attempts += 1
        retry_in = policy.retry_delay(attempts, outcome.retry_after)
        if retry_in is None:
            state = State.DEAD
            reason = f"gave up after {attempts} attempts; last: {outcome.reason}"
        else:
            state, due, finished = State.PENDING, now + timedelta(seconds=retry_in), None
    return AttemptChange(
        edge=Edge.ATTEMPT,
        from_states=_ATTEMPT_FROM,
        state=state,
        attempt_number=claimed.attempts + claimed.deferrals + 1,
        attempts=attempts,
        deferrals=deferrals,
        next_attempt_at=due,
        reason=reason,
        upstream_ref=ref,
        finished_at=finished,
        last_status_code=outcome.status_code,
        updated_at=now,
    )


def release_lease(now: datetime) -> LeaseRelease:
    """Give a claimed row back untouched (shutdown, paused upstream): no attempt used."""
    rule = EDGES[Edge.RELEASE_LEASE]
    return LeaseRelease(
        edge=Edge.RELEASE_LEASE, from_states=rule.from_states, state=State.PENDING, updated_at=now
    )


def reclaim_lease(now: datetime) -> LeaseReclaim:
    """Take back the rows of a worker that is gone, without waiting for their lease to run out."""
    rule = EDGES[Edge.RECLAIM_LEASE]
    return LeaseReclaim(
        edge=Edge.RECLAIM_LEASE, from_states=rule.from_states, state=State.PENDING, updated_at=now
    )


def skip(now: datetime, reason: str) -> Skip:
    """A claimed consent call the worker will not make (an echo, or already carried)."""
    rule = EDGES[Edge.SKIP]
    return Skip(
        edge=Edge.SKIP,
        from_states=rule.from_states,
        state=State.DROPPED,
        reason=reason,
        updated_at=now,
    )


def resume_deferred(now: datetime) -> DeferralResume:
    """A lifted credentials pause: the rows it held back are due now, not after the probe."""
    rule = EDGES[Edge.RESUME_DEFERRED]
    return DeferralResume(
        edge=Edge.RESUME_DEFERRED,
        from_states=rule.from_states,
        state=State.PENDING,
        updated_at=now,
    )


def release_parked(now: datetime) -> ParkedRelease:
    """An identity arrived for a parked event's email: it is due now, keyed by that ID."""
    rule = EDGES[Edge.RELEASE_PARKED]
    return ParkedRelease(
        edge=Edge.RELEASE_PARKED,
        from_states=rule.from_states,
        state=State.PENDING,
        reason=None,
        updated_at=now,
    )


def expire_parked(now: datetime, *, ttl_hours: float) -> ParkedExpiry:
    """No identity arrived in time: the parked event is dead, with the reason."""
    rule = EDGES[Edge.EXPIRE_PARKED]
    return ParkedExpiry(
        edge=Edge.EXPIRE_PARKED,
        from_states=rule.from_states,
        state=State.DEAD,
        reason=f"no CleverTap ID for this email arrived within {ttl_hours:g} h "
        "(BRIDGE_PARK_TTL_HOURS)",
        updated_at=now,
    )


def retry(now: datetime, *, force: bool = False) -> OperatorReplay:
    """One item due now on a fresh schedule; a delivered one only with ``force`` (resend)."""
    from_states = EDGES[Edge.RETRY].from_states
    if force:
        from_states = from_states | EDGES[Edge.RESEND].from_states
    return OperatorReplay(
        edge=Edge.RESEND if force else Edge.RETRY,
        from_states=from_states,
        state=State.PENDING,
        reason=REPLAYED_REASON,
        updated_at=now,
    )


def replay(now: datetime) -> OperatorReplay:
    """Bulk retry: never delivered items (they are resent one at a time, with force)."""
    return OperatorReplay(
        edge=Edge.REPLAY,
        from_states=EDGES[Edge.REPLAY].from_states,
        state=State.PENDING,
        reason=REPLAYED_REASON,
        updated_at=now,
    )


def cancel(now: datetime) -> Cancellation:
    """Only what has not finished: pending (not on the wire) or parked."""
    return Cancellation(
        edge=Edge.CANCEL,
        from_states=EDGES[Edge.CANCEL].from_states,
        state=State.CANCELLED,
        reason=CANCELLED_REASON,
        updated_at=now,
    )


def purge() -> Purge:
    """Delete finished (or parked) rows; pending ones may be on the wire and are refused."""
    return Purge(edge=Edge.PURGE, from_states=EDGES[Edge.PURGE].from_states, state=None)
