"""Group commit of attempt outcomes: the answers of many calls in one transaction.

A delivery hands its outcome to ``OutcomeBatcher.record`` and waits for the commit. On its
own the batcher writes the first outcome at once and those that arrive while that
transaction is on its way to disk together in the next one: nobody waits for a timer, an
idle worker records one outcome per commit and a busy one dozens. The worker loop instead
*drives* it (``drive``): it takes the queued outcomes itself and commits them in the same
transaction as the claim that refills their slots (``OutboxConsumer.record_and_claim``).

The crash bound: a delivery keeps its concurrency slot until its outcome is committed (the
caller awaits ``record``, and the loop counts it in flight until then), so calls that were
answered but not yet recorded count as in flight. A ``kill -9`` can therefore re-send at most
``concurrency`` calls: those in flight and those whose answer was not yet committed, together
never more than the slots.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Generic, TypeVar

from app.outbox.repository import Claimed
from app.upstream import Outcome

T = TypeVar("T")

#: Outcomes per transaction at most (a bound on one statement's parameters).
MAX_BATCH = 500

#: Writes outcomes; the second argument: when answers that waited (``requeue``) had come.
Write = Callable[[Sequence[tuple[Claimed, Outcome]], Mapping[int, datetime] | None], list[T]]


class OutcomeBatcher(Generic[T]):
    """Queues outcomes; writes them with ``write`` (in a thread) one batch at a time, or
    hands them to the loop that drives it."""

    def __init__(self, write: Write[T], *, max_batch: int = MAX_BATCH) -> None:
        self._write = write
        self._max = max_batch
        self._queue: list[tuple[Claimed, Outcome, asyncio.Future[T]]] = []
        self._task: asyncio.Task[None] | None = None
        self._driven: asyncio.Event | None = None
        #: When the answers of rows put back by ``requeue`` had arrived (by then at the latest),
        #: so that their attempts are written with that time, not the time of the write.
        self._answered: dict[int, datetime] = {}

    async def record(self, row: Claimed, outcome: Outcome) -> T:
        """Resolve with ``write``'s result for this row once its batch is committed.

        Cancelling the caller does not take the outcome back: the call was made, so its
        answer is written all the same (``drain`` waits for it).
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((row, outcome, future))
        if self._driven is not None:
            self._driven.set()
        elif self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush(), name="record-outcomes")
        return await asyncio.shield(future)

    def drive(self, queued: asyncio.Event | None) -> None:
        """Let the caller flush (``take`` and ``settle``; ``queued`` is set whenever an
        outcome arrives), or with None flush by itself again (what is queued goes now)."""
        self._driven = queued
        if queued is None and self._queue and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._flush(), name="record-outcomes")
        elif queued is not None and self._queue:
            queued.set()

    def take(self) -> list[tuple[Claimed, Outcome, asyncio.Future[T]]]:
        """The queued outcomes (up to a batch), for the driver to commit and ``settle``."""
        batch, self._queue = self._queue[: self._max], self._queue[self._max :]
        return batch

    def requeue(
        self, batch: list[tuple[Claimed, Outcome, asyncio.Future[T]]], answered_by: datetime
    ) -> None:
        """Put a batch that could not be written back in front of the queue, in its order,
        remembering that its answers had arrived by ``answered_by`` (when the write that
        failed began; the first failure's time is kept)."""
        self._queue[:0] = batch
        for row, _, _ in batch:
            self._answered.setdefault(row.id, answered_by)

    def answered(
        self, batch: list[tuple[Claimed, Outcome, asyncio.Future[T]]]
    ) -> dict[int, datetime] | None:
        """When the answers of ``batch`` that waited (``requeue``) had arrived; None if none
        did. Kept until ``written``: a write that fails again changes nothing."""
        if not self._answered:
            return None
        known = self._answered
        stamps = {row.id: known[row.id] for row, _, _ in batch if row.id in known}
        return stamps or None

    def written(self, batch: list[tuple[Claimed, Outcome, asyncio.Future[T]]]) -> None:
        """``batch`` is committed: its stamps are no longer needed."""
        if self._answered:
            for row, _, _ in batch:
                self._answered.pop(row.id, None)

    @staticmethod
    def settle(
        batch: list[tuple[Claimed, Outcome, asyncio.Future[T]]],
        results: list[T] | BaseException,
    ) -> None:
        """Resolve each waiting delivery with its result, or the batch's error."""
        if isinstance(results, BaseException):
            for _, _, future in batch:
                if future.done():
                    continue
                if isinstance(results, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(results)
                    future.exception()  # retrieved: a cancelled caller leaves no warning
            return
        for (_, _, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def _flush(self) -> None:
        while self._queue and self._driven is None:
            batch = self.take()
            try:
                results = await asyncio.to_thread(
                    self._write, [(r, o) for r, o, _ in batch], self.answered(batch)
                )
            except asyncio.CancelledError as exc:
                self.written(batch)
                self.settle(batch, exc)
                raise
            except Exception as exc:
                self.written(batch)
                self.settle(batch, exc)
                continue
            self.written(batch)
            self.settle(batch, results)

    @property
    def pending(self) -> int:
        """Outcomes queued and not yet taken for a commit."""
        return len(self._queue)

    async def drain(self) -> None:
        """Wait until every queued outcome is committed (at shutdown)."""
        self.drive(None)
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)
