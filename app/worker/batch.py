"""Group commit of attempt outcomes: the answers of many calls in one transaction.

A delivery hands its outcome to ``OutcomeBatcher.record`` and waits for the commit. The first
outcome is written at once; those that arrive while that transaction is on its way to disk
are written together in the next one, and so on. Nobody waits for a timer: the batch is
whatever finished during the previous commit, so an idle worker records one outcome in one
commit and a busy one records dozens.

The crash bound: a delivery keeps its concurrency slot until its outcome is committed (the
caller awaits ``record``), so calls that were answered but not yet recorded count as in
flight. A ``kill -9`` can therefore re-send at most ``concurrency`` calls: those in flight
and those whose answer was not yet committed, together never more than the slots.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from app.outbox.repository import Claimed
from app.upstream import Outcome

T = TypeVar("T")

#: Outcomes per transaction at most (a bound on one statement's parameters).
MAX_BATCH = 500

Write = Callable[[Sequence[tuple[Claimed, Outcome]]], list[T]]


class OutcomeBatcher(Generic[T]):
    """Queues outcomes and writes them with ``write`` (in a thread), one batch at a time."""

    def __init__(self, write: Write[T], *, max_batch: int = MAX_BATCH) -> None:
        self._write = write
        self._max = max_batch
        self._queue: list[tuple[Claimed, Outcome, asyncio.Future[T]]] = []
        self._task: asyncio.Task[None] | None = None

    async def record(self, row: Claimed, outcome: Outcome) -> T:
        """Resolve with ``write``'s result for this row once its batch is committed.

        Cancelling the caller does not take the outcome back: the call was made, so its
        answer is written all the same (``drain`` waits for it).
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((row, outcome, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush(), name="record-outcomes")
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self._max], self._queue[self._max :]
            try:
                results = await asyncio.to_thread(self._write, [(r, o) for r, o, _ in batch])
            except asyncio.CancelledError:
                for _, _, future in batch:
                    future.cancel()
                raise
            except Exception as exc:
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                        # Retrieved here, so a cancelled caller leaves no "never retrieved".
                        future.exception()
                continue
            for (_, _, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    @property
    def pending(self) -> int:
        """Outcomes queued and not yet committed."""
        return len(self._queue)

    async def drain(self) -> None:
        """Wait until every queued outcome is committed (at shutdown)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)
