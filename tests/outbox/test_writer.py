"""The group-commit writer on its own: batching, durability before the answer, dedup inside and
across batches, isolation of a bad record, retries of conflicts, and shutdown."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError

import app.outbox.writer as writer_module
from app.clock import ManualClock, utcnow
from app.identity.models import Identity
from app.outbox import repository
from app.outbox.models import (
    CallStatus,
    Delivery,
    Direction,
    InboundCall,
    Operation,
    Source,
    Upstream,
)
from app.outbox.schemas import IdentityObservation, IngestRecord, IngestResult, NewDelivery
from app.outbox.writer import IngestWriter, WriterUnavailable

RealIngest = Callable[..., list[IngestResult]]
REAL_INGEST: RealIngest = repository.ingest_batch


def record(
    *emails: str,
    key: str | None = None,
    target: str = "c1",
    clevertap_id: str | None = "__id",
    body: str | None = "{}",
) -> IngestRecord:
    now = utcnow()
    rec = IngestRecord(
        source=Source.CLEVERTAP,
        route="clevertap.campaign",
        target=target,
        status=CallStatus.ACCEPTED,
        http_status=200,
        received_at=now,
        body=body,  # type: ignore[arg-type]  # None violates NOT NULL on purpose
        dedup_key=key,
    )
    for email in emails:
        rec.deliveries.append(
            NewDelivery(
                operation=Operation.CAMPAIGN_TRIGGER,
                upstream=Upstream.MAILMODO,
                direction=Direction.CLEVERTAP_TO_MAILMODO,
                target=target,
                email=email,
                clevertap_id=clevertap_id,
                payload=f'{{"email": "{email}"}}',
                next_attempt_at=now,
            )
        )
        if clevertap_id is not None:
            rec.identities.append(IdentityObservation(email, clevertap_id, "test"))
    return rec


def count(engine: Engine, model: type[Any]) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


class Commits:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


@pytest.fixture
def commits() -> Commits:
    return Commits()


@pytest.fixture
def writer(db: Engine, commits: Commits) -> Iterator[IngestWriter]:
    w = IngestWriter(db, dedup_window_seconds=3600, on_commit=commits)
    w.start()
    yield w
    w.stop()


class Gate:
    """Holds the writer inside its first transaction so that the next calls queue up and are
    written together; records every batch it sees."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, fail: Callable[[IngestRecord], bool]
    ) -> None:
        self.sizes: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self._fail = fail
        monkeypatch.setattr(repository, "ingest_batch", self._ingest)

    def _ingest(
        self, conn: Connection, records: list[IngestRecord], **kw: Any
    ) -> list[IngestResult]:
        self.sizes.append(len(records))
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(10)
        if any(self._fail(r) for r in records):
            raise RuntimeError("this batch holds a bad record")
        return REAL_INGEST(conn, records, **kw)

    async def hold(self, writer: IngestWriter) -> asyncio.Future[IngestResult]:
        first = asyncio.ensure_future(writer.submit(record("warm-up@x.io")))
        assert await asyncio.to_thread(self.entered.wait, 10)
        return first


async def queue_up(
    writer: IngestWriter, records: list[IngestRecord]
) -> list[asyncio.Future[IngestResult]]:
    futures: list[asyncio.Future[IngestResult]] = [
        asyncio.ensure_future(writer.submit(r)) for r in records
    ]
    for _ in range(3):
        await asyncio.sleep(0)  # every submit() reaches the queue
    return futures


# --- durability and batching -------------------------------------------------------------------


async def test_submit_resolves_once_committed(writer: IngestWriter, db: Engine) -> None:
    result = await writer.submit(record("a@x.io", "b@x.io", key="k1"))
    assert result.duplicate is False
    assert len(result.delivery_ids) == 2
    fresh = create_engine(db.url.render_as_string(hide_password=False))
    try:
        with fresh.connect() as conn:
            ids = conn.execute(select(Delivery.id).order_by(Delivery.id)).scalars().all()
            call = conn.execute(select(InboundCall)).one()
    finally:
        fresh.dispose()
    assert ids == result.delivery_ids
    assert call.id == result.call_id
    assert call.item_count == 2


async def test_concurrent_records_share_one_transaction(
    writer: IngestWriter, db: Engine, commits: Commits, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(monkeypatch, fail=lambda r: False)
    first = await gate.hold(writer)
    n = 50
    futures = await queue_up(writer, [record(f"u{i}@x.io", key=f"k{i}") for i in range(n)])
    gate.release.set()
    results = await asyncio.gather(first, *futures)
    assert gate.sizes == [1, n]
    for _ in range(100):  # on_commit runs in the writer thread right after the answers
        if commits.count == 2:
            break
        await asyncio.sleep(0.01)
    assert commits.count == 2
    # each caller gets its own record's rows, in order
    with db.connect() as conn:
        emails = dict(conn.execute(select(Delivery.id, Delivery.email)).all())
    for i, result in enumerate(results[1:]):
        assert emails[result.delivery_ids[0]] == f"u{i}@x.io"
    assert len({r.call_id for r in results}) == n + 1


async def test_a_bad_record_does_not_fail_its_batch(
    writer: IngestWriter, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(monkeypatch, fail=lambda r: r.target == "bad")
    first = await gate.hold(writer)
    records = [record(f"u{i}@x.io", key=f"k{i}") for i in range(5)]
    records.insert(2, record("bad@x.io", key="kbad", target="bad"))
    futures = await queue_up(writer, records)
    gate.release.set()
    outcomes = await asyncio.gather(first, *futures, return_exceptions=True)
    assert gate.sizes[:2] == [1, 6]  # tried together first, then one by one
    bad = outcomes[3]
    assert isinstance(bad, WriterUnavailable)
    good = [o for i, o in enumerate(outcomes) if i != 3]
    assert all(isinstance(o, IngestResult) and not o.duplicate for o in good)
    assert count(db, InboundCall) == 6
    with db.connect() as conn:
        emails = set(conn.execute(select(Delivery.email)).scalars())
    assert "bad@x.io" not in emails
    assert len(emails) == 6


async def test_a_record_violating_a_constraint_fails_alone(
    writer: IngestWriter, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(monkeypatch, fail=lambda r: False)
    first = await gate.hold(writer)
    records = [record("ok1@x.io"), record("null@x.io", body=None), record("ok2@x.io")]
    futures = await queue_up(writer, records)
    gate.release.set()
    outcomes = await asyncio.gather(first, *futures, return_exceptions=True)
    assert isinstance(outcomes[2], WriterUnavailable)
    assert "IntegrityError" in str(outcomes[2])
    assert isinstance(outcomes[1], IngestResult)
    assert isinstance(outcomes[3], IngestResult)
    with db.connect() as conn:
        emails = sorted(e or "" for e in conn.execute(select(Delivery.email)).scalars())
    assert emails == ["ok1@x.io", "ok2@x.io", "warm-up@x.io"]
    # the writer is still alive
    assert (await writer.submit(record("after@x.io"))).delivery_ids


# --- dedup -----------------------------------------------------------------------------------


async def test_duplicates_inside_one_batch(
    writer: IngestWriter, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(monkeypatch, fail=lambda r: False)
    first = await gate.hold(writer)
    futures = await queue_up(
        writer, [record("a@x.io", "b@x.io", key="same") for _ in range(4)] + [record("c@x.io")]
    )
    gate.release.set()
    _, *results = await asyncio.gather(first, *futures)
    assert gate.sizes == [1, 5]
    assert [r.duplicate for r in results] == [False, True, True, True, False]
    assert results[0].delivery_ids == results[1].delivery_ids == results[3].delivery_ids
    assert {r.call_id for r in results[:4]} == {results[0].call_id}
    assert count(db, Delivery) == 1 + 2 + 1
    with db.connect() as conn:
        statuses = conn.execute(select(InboundCall.status).order_by(InboundCall.id)).scalars().all()
    assert sorted(statuses) == ["accepted"] * 3 + ["duplicate"] * 3


async def test_duplicates_across_batches_and_the_window(db: Engine, clock: ManualClock) -> None:
    writer = IngestWriter(db, dedup_window_seconds=60)
    writer.start()
    try:
        a = await writer.submit(record("a@x.io", key="k"))
        b = await writer.submit(record("a@x.io", key="k"))
        assert (a.duplicate, b.duplicate) == (False, True)
        assert b.delivery_ids == a.delivery_ids
        assert b.call_id == a.call_id
        clock.advance(61)
        c = await writer.submit(record("a@x.io", key="k"))
        assert c.duplicate is False
        assert c.delivery_ids != a.delivery_ids
    finally:
        writer.stop()
    with db.connect() as conn:
        keys = conn.execute(select(InboundCall.dedup_key).order_by(InboundCall.id)).scalars().all()
    assert keys == [None, None, "k"]


async def test_records_without_a_key_are_never_duplicates(writer: IngestWriter) -> None:
    results = [await writer.submit(record("a@x.io")) for _ in range(3)]
    assert [r.duplicate for r in results] == [False, False, False]
    assert len({r.call_id for r in results}) == 3


async def test_a_duplicate_repeats_what_the_original_skipped(writer: IngestWriter) -> None:
    original = record("a@x.io", key="k")
    original.skipped = 3
    await writer.submit(original)
    again = await writer.submit(record("a@x.io", key="k"))
    assert (again.duplicate, again.skipped) == (True, 3)


# --- identities ------------------------------------------------------------------------------


async def test_identity_latest_wins_across_and_within_batches(
    writer: IngestWriter, db: Engine
) -> None:
    await writer.submit(record("a@x.io", clevertap_id="__old"))
    await writer.submit(record("a@x.io", clevertap_id="__new"))
    both = record("b@x.io", clevertap_id="__b1")
    both.identities.append(IdentityObservation("b@x.io", "__b2", "test"))
    await writer.submit(both)
    with db.connect() as conn:
        rows = dict(conn.execute(select(Identity.email, Identity.clevertap_id)).all())
    assert rows == {"a@x.io": "__new", "b@x.io": "__b2"}


async def test_duplicates_teach_no_identity(writer: IngestWriter, db: Engine) -> None:
    await writer.submit(record("a@x.io", key="k", clevertap_id="__first"))
    await writer.submit(record("a@x.io", key="k", clevertap_id="__second"))
    with db.connect() as conn:
        assert conn.execute(select(Identity.clevertap_id)).scalar_one() == "__first"


# --- conflicts, database errors and shutdown ---------------------------------------------------


@pytest.mark.parametrize("error", [IntegrityError, OperationalError])
async def test_conflicts_are_retried(
    writer: IngestWriter, db: Engine, monkeypatch: pytest.MonkeyPatch, error: type[Exception]
) -> None:
    attempts: list[int] = []

    def flaky(conn: Connection, records: list[IngestRecord], **kw: Any) -> list[IngestResult]:
        attempts.append(len(records))
        if len(attempts) < 3:
            raise error("INSERT", {}, Exception("raced"))
        return REAL_INGEST(conn, records, **kw)

    monkeypatch.setattr(repository, "ingest_batch", flaky)
    result = await writer.submit(record("a@x.io", key="k"))
    assert attempts == [1, 1, 1]
    assert result.duplicate is False
    assert count(db, InboundCall) == 1


async def test_a_persistent_database_error_is_writer_unavailable(
    writer: IngestWriter, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(conn: Connection, records: list[IngestRecord], **kw: Any) -> list[IngestResult]:
        raise OperationalError("INSERT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(repository, "ingest_batch", broken)
    with pytest.raises(WriterUnavailable, match="disk I/O error"):
        await writer.submit(record("a@x.io"))
    monkeypatch.setattr(repository, "ingest_batch", REAL_INGEST)
    assert (await writer.submit(record("b@x.io"))).delivery_ids
    assert count(db, InboundCall) == 1


def test_a_lock_timeout_fails_the_batch_once_without_retrying_each_record(
    db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each attempt would wait out the lock timeout (30 s): retrying, or splitting the batch
    # into single records, would keep the last caller waiting for minutes.
    calls: list[int] = []

    def locked(conn: Connection, records: list[IngestRecord], **kw: Any) -> list[IngestResult]:
        calls.append(len(records))
        raise OperationalError("BEGIN IMMEDIATE", None, TimeoutError("database busy"))

    monkeypatch.setattr(repository, "ingest_batch", locked)
    outcomes = writer_module.commit_batch(db, [record(f"{i}@x.io") for i in range(5)], 3600)
    assert calls == [5]
    assert all(isinstance(o, WriterUnavailable) for o in outcomes)
    assert len(outcomes) == 5


async def test_a_caller_that_gave_up_does_not_break_the_writer(
    writer: IngestWriter, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(monkeypatch, fail=lambda r: False)
    first = await gate.hold(writer)
    first.cancel()
    gate.release.set()
    with pytest.raises(asyncio.CancelledError):
        await first
    # the record was still committed, and the writer goes on
    result = await writer.submit(record("next@x.io"))
    assert result.delivery_ids
    assert count(db, InboundCall) == 2


async def test_stop_writes_what_is_queued_then_refuses(
    db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = IngestWriter(db, dedup_window_seconds=3600)
    writer.start()
    writer.start()  # idempotent
    gate = Gate(monkeypatch, fail=lambda r: False)
    first = await gate.hold(writer)
    futures = await queue_up(writer, [record(f"q{i}@x.io") for i in range(3)])
    stopper = asyncio.ensure_future(asyncio.to_thread(writer.stop))
    await asyncio.sleep(0.05)
    gate.release.set()
    await stopper
    results = await asyncio.gather(first, *futures)
    assert all(r.delivery_ids for r in results)
    assert count(db, InboundCall) == 4
    with pytest.raises(WriterUnavailable, match="shutting down"):
        await writer.submit(record("late@x.io"))
    writer.stop()  # idempotent


async def test_submit_before_start_is_refused(db: Engine) -> None:
    writer = IngestWriter(db, dedup_window_seconds=3600)
    with pytest.raises(WriterUnavailable):
        await writer.submit(record("a@x.io"))
    assert count(db, InboundCall) == 0
