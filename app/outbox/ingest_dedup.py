"""Which calls of an ingest batch repeat another: a stored call (the look-up), an earlier
call of the same batch, or — on PostgreSQL — a call another replica committed after our
look-up, found by inserting with ``ON CONFLICT (dedup_key) DO NOTHING`` (issue 14).

A stored call gives its key up when it is too old for the window, and a CleverTap opt-out
(``/clevertap/consent/unsubscribe``) also once one of its recipients has opted in again since:
CleverTap's bodies carry no time, so a person who opts out, in, and out again within the
window sends the same bytes twice, and the second opt-out must not be taken for a retry of
the first (Mailmodo would go on mailing them). The other way round the window holds: a late
retry of an opt-in must never undo a later opt-out.

SQL of ``app.outbox.repository.ingest_batch``, kept apart so the repository stays readable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError

from app.consent import repository as consent_repo
from app.fastsql import insert_returning_ids, sqlite_query, sqlite_time
from app.inbound.dedup import keyed_by_body
from app.outbox.models import InboundCall, Operation
from app.outbox.schemas import IngestRecord

CALLS = cast(Table, InboundCall.__table__)

_DEDUP_LOOKUP = select(
    InboundCall.id, InboundCall.dedup_key, InboundCall.received_at, InboundCall.skipped_count
).where(InboundCall.dedup_key.in_(bindparam("keys", expanding=True)))
_INSERT_KEYED_CALL = (
    pg_insert(CALLS)
    .on_conflict_do_nothing(index_elements=[CALLS.c.dedup_key])
    .returning(CALLS.c.id, CALLS.c.dedup_key)
)


class LostDedupRace(IntegrityError):
    """A call lost the race for its dedup key, yet the winner's key is gone: the writer
    retries the batch (as for any unique-constraint failure), and the retry's look-up decides."""

    def __init__(self, key: str) -> None:
        super().__init__("INSERT inbound_calls", {"dedup_key": key}, Exception("dedup race"))


@dataclass(slots=True)
class Sorted:
    """Which records of a batch are stored as themselves and which repeat another call."""

    originals: list[int] = field(default_factory=list)
    #: record index -> index of the original in this batch
    dup_of_batch: dict[int, int] = field(default_factory=dict)
    #: record index -> (stored call id, what it skipped)
    dup_of_stored: dict[int, tuple[int, int]] = field(default_factory=dict)


def fresh_dedup_keys(
    conn: Connection, records: Sequence[IngestRecord], cutoff: datetime
) -> dict[str, tuple[int, int]]:
    """Stored calls (id, skipped) by dedup key, for the keys of ``records`` seen since
    ``cutoff``; older calls give their key up (they keep their row, not their key)."""
    keys = {r.dedup_key for r in records if r.dedup_key}
    fresh: dict[str, tuple[int, int]] = {}
    if not keys:
        return fresh
    stale: list[int] = []
    answered_at: dict[str, datetime] = {}
    rows: list[tuple[Any, ...]]
    if conn.dialect.name == "sqlite":
        rows = [
            (call_id, key, sqlite_time(received_at), skipped)
            for call_id, key, received_at, skipped in sqlite_query(
                conn, _DEDUP_LOOKUP, {"keys": list(keys)}
            )
        ]
    else:
        rows = [tuple(row) for row in conn.execute(_DEDUP_LOOKUP, {"keys": list(keys)})]
    for call_id, key, received_at, skipped in rows:
        if key is None:
            continue
        if received_at >= cutoff:
            fresh[key] = (call_id, skipped)
            answered_at[key] = received_at
        else:
            stale.append(call_id)
    for key in _opt_outs_since_opted_in(conn, records, answered_at):
        stale.append(fresh.pop(key)[0])
    if stale:
        conn.execute(update(InboundCall).where(InboundCall.id.in_(stale)).values(dedup_key=None))
    return fresh


def _opt_outs_since_opted_in(
    conn: Connection, records: Sequence[IngestRecord], answered_at: dict[str, datetime]
) -> list[str]:
    """Keys of stored opt-out calls repeated in ``records`` whose recipients include one who
    opted in again since the stored call was answered: stored since, or earlier in this batch.
    Only keys hashed from the body: a repeated ``Idempotency-Key`` is a retry by the sender's
    own word."""
    if not answered_at:
        return []  # no repeat of a stored call in this batch: the usual case, at no cost
    emails_by_key: dict[str, set[str]] = {}
    reopened: set[str] = set()
    opted_in_before: set[str] = set()  # resubscribed by an earlier record of this batch
    for record in records:
        key = record.dedup_key
        if key is not None and key in answered_at and keyed_by_body(key):
            out = _emails(record, Operation.CONTACT_UNSUBSCRIBE)
            if out:
                emails_by_key.setdefault(key, set()).update(out)
            if out & opted_in_before:
                reopened.add(key)
        opted_in_before |= _emails(record, Operation.CONTACT_RESUBSCRIBE)
    return [
        key
        for key, emails in emails_by_key.items()
        if key in reopened or consent_repo.opted_in_since(conn, emails, answered_at[key])
    ]


def _opted_in_between(records: Sequence[IngestRecord], first: int, later: int) -> bool:
    """Whether an opt-in for a recipient of opt-out ``later`` came between it and the earlier
    call of this batch it repeats (both keyed by their body)."""
    key = records[later].dedup_key
    if key is None or not keyed_by_body(key):
        return False
    out = _emails(records[later], Operation.CONTACT_UNSUBSCRIBE)
    return bool(out) and any(
        out & _emails(record, Operation.CONTACT_RESUBSCRIBE)
        for record in records[first + 1 : later]
    )


def _emails(record: IngestRecord, operation: Operation) -> set[str]:
    """The recipients of ``record``'s deliveries of ``operation``."""
    return {d.email for d in record.deliveries if d.operation is operation and d.email}


def sort_duplicates(records: Sequence[IngestRecord], fresh: dict[str, tuple[int, int]]) -> Sorted:
    sorted_ = Sorted()
    first_in_batch: dict[str, int] = {}
    for i, record in enumerate(records):
        key = record.dedup_key
        if key is not None and key in fresh:
            sorted_.dup_of_stored[i] = fresh[key]
        elif key is not None and key in first_in_batch:
            first = first_in_batch[key]
            if _opted_in_between(records, first, i):
                # A new opt-out, not a repeat: the earlier call gives its key up, as a stored
                # one does (``_opt_outs_since_opted_in``), and this one is stored as itself.
                records[first].dedup_key = None
                sorted_.originals.append(i)
                first_in_batch[key] = i
            else:
                sorted_.dup_of_batch[i] = first
        else:
            sorted_.originals.append(i)
            if key is not None:
                first_in_batch[key] = i
    return sorted_


def insert_calls_first_wins(
    conn: Connection,
    records: Sequence[IngestRecord],
    sorted_: Sorted,
    call_rows: list[dict[str, Any]],
) -> list[int]:
    """Insert the calls; a keyed call whose key is already taken (by a transaction that
    committed after our look-up) is not inserted but made a duplicate of the stored call.

    Returns the ids of the originals left in ``sorted_.originals``. Keyed rows go in key order,
    so two replicas inserting overlapping keys wait on each other in the same order and never
    deadlock.
    """
    keyed = sorted(
        (i for i, row in enumerate(call_rows) if row["dedup_key"] is not None),
        key=lambda i: call_rows[i]["dedup_key"],
    )
    unkeyed = [i for i, row in enumerate(call_rows) if row["dedup_key"] is None]
    ids: dict[int, int] = {}
    if unkeyed:
        new_ids = insert_returning_ids(conn, CALLS, [call_rows[i] for i in unkeyed])
        ids.update(zip(unkeyed, new_ids, strict=True))
    lost: list[int] = []
    if keyed:
        inserted = {
            key: call_id
            for call_id, key in conn.execute(
                _INSERT_KEYED_CALL, [call_rows[i] for i in keyed]
            ).all()
        }
        for i in keyed:
            call_id = inserted.get(call_rows[i]["dedup_key"])
            if call_id is None:
                lost.append(i)
            else:
                ids[i] = call_id
    if not lost:
        return [ids[i] for i in range(len(call_rows))]
    # The winners have committed (ON CONFLICT waited for them): this statement sees them.
    lost_records = {sorted_.originals[i] for i in lost}
    keys = [records[r].dedup_key for r in lost_records]
    winners = {
        key: (call_id, skipped)
        for call_id, key, _received, skipped in conn.execute(_DEDUP_LOOKUP, {"keys": keys})
    }
    for r in lost_records:
        key = records[r].dedup_key
        assert key is not None
        if key not in winners:  # the winner's key was given up meanwhile: retry the batch
            raise LostDedupRace(key)
        sorted_.dup_of_stored[r] = winners[key]
    for r, original in list(sorted_.dup_of_batch.items()):
        if original in lost_records:  # a repeat in this batch of a call that lost
            del sorted_.dup_of_batch[r]
            sorted_.dup_of_stored[r] = sorted_.dup_of_stored[original]
    gone = set(lost)
    kept = [i for i in range(len(call_rows)) if i not in gone]
    sorted_.originals[:] = [sorted_.originals[i] for i in kept]
    return [ids[i] for i in kept]
