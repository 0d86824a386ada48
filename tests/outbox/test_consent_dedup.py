"""``app.outbox.ingest_dedup``: a CleverTap opt-out repeated byte for byte after the person
opted in again is a new opt-out, also when the opt-in is in the same batch; the check holds
for calls with tens of thousands of recipients (its look-ups are chunked)."""

from __future__ import annotations

import dataclasses
import sqlite3
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from app.clevertap.source import parse_call
from app.clock import utcnow
from app.inbound.from_clevertap import build_record
from app.outbox import repository
from app.outbox.models import Operation
from app.outbox.schemas import IngestRecord, IngestResult
from tests.conftest import profiles_body

A = "ann@example.com"
OPT_OUT_KEY = "clevertap.consent.unsubscribe::sha256:1"
OPT_IN_KEY = "clevertap.consent.resubscribe::sha256:2"


def consent(operation: Operation, key: str, at: datetime, *emails: str) -> IngestRecord:
    record = build_record(
        operation=operation,
        target="",
        parsed=parse_call(profiles_body(emails[0])),
        body=b"{}",
        content_type="application/json",
        dedup_key=key,
        request_id=None,
    )
    record.target = None
    record.received_at = at
    proto = dataclasses.replace(record.deliveries[0], target=None)
    record.deliveries = [dataclasses.replace(proto, email=e) for e in emails]
    return record


def ingest(db: Engine, records: list[IngestRecord], now: datetime) -> list[IngestResult]:
    with db.begin() as conn:
        return repository.ingest_batch(conn, records, dedup_window_seconds=3600, now=now)


def test_an_opt_in_earlier_in_the_same_batch_makes_the_repeated_opt_out_new(db: Engine) -> None:
    t0 = utcnow()
    ingest(db, [consent(Operation.CONTACT_UNSUBSCRIBE, OPT_OUT_KEY, t0, A)], t0)
    t1 = t0 + timedelta(seconds=60)
    batch = [
        consent(Operation.CONTACT_RESUBSCRIBE, "clevertap.consent.resubscribe::sha256:2", t1, A),
        consent(Operation.CONTACT_UNSUBSCRIBE, OPT_OUT_KEY, t1, A),
    ]
    results = ingest(db, batch, t1)
    assert [r.duplicate for r in results] == [False, False]
    # An opt-in *after* the repeat in its batch does not make it new: it is still a retry.
    bob, bob_key = "bob@example.com", "clevertap.consent.unsubscribe::sha256:4"
    ingest(db, [consent(Operation.CONTACT_UNSUBSCRIBE, bob_key, t0, bob)], t0)
    batch = [
        consent(Operation.CONTACT_UNSUBSCRIBE, bob_key, t1, bob),
        consent(Operation.CONTACT_RESUBSCRIBE, "clevertap.consent.resubscribe::sha256:5", t1, bob),
    ]
    assert [r.duplicate for r in ingest(db, batch, t1)] == [True, False]


def test_opt_out_opt_in_opt_out_in_one_batch(db: Engine) -> None:
    """All three in one batch (a fast toggle, or CleverTap flushing its queue after an outage):
    the second opt-out is new; the first gives its key up, so a later retry of the same bytes
    is a duplicate of the second."""
    t0 = utcnow()
    ms = timedelta(milliseconds=1)
    batch = [
        consent(Operation.CONTACT_UNSUBSCRIBE, OPT_OUT_KEY, t0, A),
        consent(Operation.CONTACT_RESUBSCRIBE, OPT_IN_KEY, t0 + ms, A),
        consent(Operation.CONTACT_UNSUBSCRIBE, OPT_OUT_KEY, t0 + 2 * ms, A),
    ]
    results = ingest(db, batch, t0 + 3 * ms)
    assert [r.duplicate for r in results] == [False, False, False]
    t1 = t0 + timedelta(seconds=30)
    [retry] = ingest(db, [consent(Operation.CONTACT_UNSUBSCRIBE, OPT_OUT_KEY, t1, A)], t1)
    assert retry.duplicate
    assert retry.call_id == results[2].call_id


def test_a_repeated_opt_out_with_thousands_of_recipients_is_checked_in_chunks(
    db: Engine,
) -> None:
    """Above a statement's parameter limit (here SQLite's lowered to 1,200; 32,766 on common
    builds, PostgreSQL's 65,535, reachable with a raised body limit): the retry is still found
    a duplicate, not refused with a database error (a 503 for the whole batch, every retry)."""
    emails = [f"u{i}@example.io" for i in range(2_500)]
    if db.dialect.name == "sqlite":

        @event.listens_for(db, "connect")
        def _limit(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 1_200)

        db.dispose()
    t0 = utcnow()
    [first] = ingest(db, [consent(Operation.CONTACT_UNSUBSCRIBE, OPT_OUT_KEY, t0, *emails)], t0)
    assert len(first.delivery_ids) == len(emails)
    t1 = t0 + timedelta(seconds=30)
    [again] = ingest(db, [consent(Operation.CONTACT_UNSUBSCRIBE, OPT_OUT_KEY, t1, *emails)], t1)
    assert again.duplicate
