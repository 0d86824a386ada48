"""CleverTap's concurrent uploads per account, counted across every worker process.

CleverTap allows 15 concurrent upload requests per account; ``BRIDGE_CLEVERTAP_MAX_CONCURRENCY``
is the bridge's share of it. On PostgreSQL it holds for the whole cluster: an upload first
takes one of N **session advisory locks** (``pg_try_advisory_lock(<account key>, slot)``,
slot 0..N-1) on a connection it keeps until the upload's answer is in, then unlocks.

Why advisory locks rather than a table of slot rows with lease expiry:

* a crashed holder (kill -9, lost host) frees its slot the moment PostgreSQL sees its
  connection close, instead of after a lease that must outlast the slowest upload;
* taking and giving back a slot writes nothing (no WAL, no dead rows, no migration): one
  round trip each, ~0.1-0.3 ms on a LAN, per upload of up to 1,000 records;
* the cost: each upload in flight holds one database connection (a small pool of its own,
  N connections per worker process at most), and session locks need session pooling — behind
  PgBouncer in *transaction* mode, point ``BRIDGE_DATABASE_URL`` of the workers at PostgreSQL
  directly.

If the server restarts mid-upload, every lock is gone while those uploads finish, so for a
moment up to 2N may be open; new uploads wait for free slots as usual. On SQLite (one
machine) the runner's per-process limit is the whole limit and ``LocalSlots`` lets every
upload through.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Protocol

import structlog
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine

log = structlog.get_logger(__name__)

# LIMIT 1 stops the scan at the first slot that could be locked: one lock taken, at most.
_TAKE = text(
    "SELECT s FROM generate_series(0, :slots - 1) AS s WHERE pg_try_advisory_lock(:key, s) LIMIT 1"
)
_GIVE = text("SELECT pg_advisory_unlock(:key, :slot)")


class UploadSlots(Protocol):
    """What an uploader needs: hold a slot for the length of one upload."""

    def hold(self, wait_seconds: float) -> AbstractAsyncContextManager[bool]: ...

    def close(self) -> None: ...


class LocalSlots:
    """SQLite: one machine, the runner's in-process limit is the limit."""

    @asynccontextmanager
    async def hold(self, wait_seconds: float) -> AsyncIterator[bool]:
        yield True

    def close(self) -> None:
        pass


def lock_key(name: str) -> int:
    """A stable signed 32-bit key for ``name`` (the first half of the advisory lock key)."""
    value = zlib.crc32(f"ctmm-bridge:{name}".encode())
    return value - (1 << 32) if value >= 1 << 31 else value


class ClusterSlots:
    """At most ``slots`` holders at once among all processes sharing the PostgreSQL server."""

    def __init__(
        self, engine: Engine, name: str, slots: int, *, poll_seconds: float = 0.05
    ) -> None:
        self.name = name
        self.slots = slots
        self.key = lock_key(name)
        self.poll_seconds = poll_seconds
        # Its own pool: a slot pins a connection for a whole upload, which must not starve
        # the claims and records of the main pool.
        self._engine = create_engine(
            engine.url, pool_size=slots + 1, max_overflow=0, pool_pre_ping=True, pool_timeout=5
        )

    def close(self) -> None:
        self._engine.dispose()

    def _take(self) -> tuple[Connection, int] | None:
        conn = self._engine.connect()
        try:
            slot = conn.execute(_TAKE, {"slots": self.slots, "key": self.key}).scalar()
            conn.commit()  # the session lock outlives the transaction
        except BaseException:
            conn.invalidate()  # closing the session drops any lock it took
            conn.close()
            raise
        if slot is None:
            conn.close()
            return None
        return conn, int(slot)

    def _give(self, conn: Connection, slot: int) -> None:
        try:
            released = conn.execute(_GIVE, {"key": self.key, "slot": slot}).scalar()
            conn.commit()
            if not released:  # the server restarted meanwhile: nothing was held any more
                log.warning("upload slot was already gone", slot=slot, name=self.name)
        except Exception:
            conn.invalidate()
        finally:
            conn.close()

    def _give_back(self, attempt: asyncio.Future[tuple[Connection, int] | None]) -> None:
        if attempt.cancelled() or attempt.exception() is not None:
            return
        taken = attempt.result()
        if taken is not None:
            asyncio.get_running_loop().run_in_executor(None, self._give, *taken)

    @asynccontextmanager
    async def hold(self, wait_seconds: float) -> AsyncIterator[bool]:
        """Yields True holding a slot, or False if none came free within ``wait_seconds``
        (or the database could not be asked): the caller gives its rows back unsent."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        delay = self.poll_seconds
        taken: tuple[Connection, int] | None = None
        while True:
            attempt = asyncio.ensure_future(asyncio.to_thread(self._take))
            try:
                taken = await asyncio.shield(attempt)
            except asyncio.CancelledError:
                attempt.add_done_callback(self._give_back)  # a slot taken as we were cancelled
                raise
            except Exception:
                log.exception("could not take an upload slot", name=self.name)
            if taken is not None or loop.time() + delay > deadline:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
        if taken is None:
            yield False
            return
        try:
            yield True
        finally:
            with suppress(Exception):
                await asyncio.shield(asyncio.to_thread(self._give, *taken))


def build_upload_slots(engine: Engine, account_id: str, slots: int) -> UploadSlots:
    """Cluster-wide slots on PostgreSQL, keyed by the CleverTap account; local on SQLite."""
    if engine.dialect.name != "postgresql":
        return LocalSlots()
    return ClusterSlots(engine, f"clevertap-upload:{account_id}", slots)
