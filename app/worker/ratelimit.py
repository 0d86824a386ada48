"""A rate limit shared by every worker process, kept in the database (see ``reserve_rate_slot``)."""

from __future__ import annotations

import asyncio

from sqlalchemy import Connection
from sqlalchemy.engine import Engine

from app.clock import epoch
from app.system import repository


class SharedRateLimiter:
    """Hands out send times ``1/rate`` apart across all processes using the same database."""

    def __init__(self, engine: Engine, name: str, rate_per_second: float) -> None:
        self._engine = engine
        self.name = name
        self.interval = 1.0 / rate_per_second

    def _reserve(self, count: int) -> list[float]:
        with self._engine.begin() as conn:
            return self.reserve_in(conn, count)

    def reserve_in(self, conn: Connection, count: int) -> list[float]:
        """``reserve`` inside the caller's transaction (the claim's: one write, not two)."""
        start = repository.reserve_rate_slot(
            conn, self.name, now=epoch(), interval=self.interval * count
        )
        return [start + i * self.interval for i in range(count)]

    async def reserve(self, count: int) -> list[float]:
        """Epoch times at which each of ``count`` calls may go; waiting costs no attempt."""
        if count <= 0:
            return []
        return await asyncio.to_thread(self._reserve, count)

    def _push(self, not_before: float) -> None:
        with self._engine.begin() as conn:
            repository.push_rate_slot(conn, self.name, not_before=not_before)

    async def hold_off(self, seconds: float) -> None:
        """The upstream asked everyone to wait (429 Retry-After): no slot before then."""
        await asyncio.to_thread(self._push, epoch() + seconds)


async def wait_until(when: float, stop: asyncio.Event | None = None) -> bool:
    """Sleep until epoch ``when`` (by the clock of ``app.clock``); False if ``stop`` was set
    first."""
    delay = when - epoch()
    if delay <= 0:
        return not (stop is not None and stop.is_set())
    if stop is None:
        await asyncio.sleep(delay)
        return True
    try:
        await asyncio.wait_for(stop.wait(), timeout=delay)
    except TimeoutError:
        return True
    return False
