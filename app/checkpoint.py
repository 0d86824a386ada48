"""SQLite WAL checkpoints off the ingest path, and out of bursts.

With SQLite's default, the connection whose commit takes the WAL past 1,000 pages copies the
WAL back into the database file and fsyncs it, inside that commit. At a few thousand calls per
second that is several times a second, in the ingest writer (the calls of that batch wait for
the copy before their 200) or in the worker (which holds the cross-process write lock
meanwhile, so ingest waits too). Each of these small checkpoints copies again the pages every
commit touches (the last leaf of each index, the tables' roots).

Under ``serve`` with the writer process, ``serve``'s processes turn the automatic checkpoint
off (``create_db_engine(..., in_serve=True)``; other processes, such as the CLI, only
checkpoint in a commit once the WAL outgrew its bound) and the writer process runs a
``Checkpointer`` thread that copies the WAL (PASSIVE: it never waits for, nor blocks, a reader
or a writer) **when ingest is quiet** — a webhook burst is written to the WAL only, and copied
once, after it — and, under sustained load, once the WAL holds ``WAL_CAP_FRAMES`` frames: the thread
copies from half the cap on, and at the cap the writer finishes the copy between two batches
and waits for the readers of older frames (``catch_up``), so that its next transaction starts
the WAL over. The WAL file stays bounded
(``WAL_CAP_FRAMES`` frames of 4 KiB, ~200 MiB) and so does the time a restart takes to read it back.

The WAL's size is read from the wal-index header in the ``-shm`` file (``mxFrame`` and
``nBackfill``, https://www.sqlite.org/walformat.html), one ``pread`` per look, on a descriptor
opened once and closed only after the process's last SQLite connection to the database: closing
any descriptor of a file drops every POSIX lock the process holds on it, SQLite's own included
(https://www.sqlite.org/howtocorrupt.html §2.2).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import structlog
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from app.config import Settings
from app.db import WAL_CAP_FRAMES, background_checkpoints, holding_write_lock, sqlite_file
from app.logging import log_throttled

log = structlog.get_logger(__name__)

#: The writer starts the WAL over only when the thread left at most this many frames to copy.
RESTART_BACKLOG = 4000
#: How long that restart waits for readers still on old frames before trying again later.
RESTART_WAIT_MS = 50
#: How often the thread looks at the WAL.
LOOK_INTERVAL = 0.1
#: Ingest is quiet when the writer has committed nothing for this long.
QUIET_SECONDS = 0.3

# The wal-index header (walformat.html §2.1), in the machine's byte order.
_MX_FRAME_OFFSET = 16
_N_BACKFILL_OFFSET = 96


def for_writer(settings: Settings, engine: Engine) -> Checkpointer | None:
    """The writer process's checkpointer, or None where SQLite's own checkpoints apply."""
    path = sqlite_file(settings.database_url)
    if path is None or not background_checkpoints(settings):
        return None
    return Checkpointer(
        path,
        settings.sqlite_synchronous,
        write_lock=functools.partial(holding_write_lock, engine),
    )


class Checkpointer:
    """Copies the WAL into the database file when ingest is quiet or the WAL is large."""

    def __init__(
        self,
        path: Path,
        synchronous: str,
        *,
        cap_frames: int = WAL_CAP_FRAMES,
        quiet_seconds: float = QUIET_SECONDS,
        look_interval: float = LOOK_INTERVAL,
        write_lock: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
    ) -> None:
        self._path = path
        self._write_lock = write_lock
        self._shm = Path(f"{path}-shm")
        self._synchronous = synchronous
        self._cap = cap_frames
        self._quiet = quiet_seconds
        self._interval = look_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._writer_conn: sqlite3.Connection | None = None
        self._shm_fd: int | None = None
        self._last_commit = time.monotonic()
        self._next_catch_up = 0.0
        self.checkpoints = 0
        self.catch_ups = 0

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        return conn

    def wal_frames(self) -> tuple[int, int]:
        """(frames in the WAL, frames already copied), from the wal-index header; (0, 0) when
        there is no WAL."""
        if self._shm_fd is None:
            try:
                self._shm_fd = os.open(self._shm, os.O_RDONLY)
            except OSError:
                return 0, 0
        head = os.pread(self._shm_fd, _N_BACKFILL_OFFSET + 4, 0)
        if len(head) < _N_BACKFILL_OFFSET + 4:
            return 0, 0
        frames = int.from_bytes(head[_MX_FRAME_OFFSET : _MX_FRAME_OFFSET + 4], sys.byteorder)
        copied = int.from_bytes(head[_N_BACKFILL_OFFSET:], sys.byteorder)
        return frames, min(copied, frames)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)
        self._thread.start()

    def release_index(self) -> None:
        """Close the ``-shm`` descriptor: only once every SQLite connection of this process to
        the database is closed (see the module)."""
        if self._shm_fd is not None:
            os.close(self._shm_fd)
            self._shm_fd = None

    def stop(self) -> None:
        """Stop the thread and close the checkpointer's own connections."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        if self._writer_conn is not None:
            self._writer_conn.close()
            self._writer_conn = None

    def committed(self) -> None:
        """The writer committed a batch (ingest is not quiet)."""
        self._last_commit = time.monotonic()

    def _due(self) -> bool:
        frames, copied = self.wal_frames()
        if frames <= copied:
            return False
        quiet = time.monotonic() - self._last_commit >= self._quiet
        return quiet or frames >= self._cap // 2

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while not self._stop.wait(self._interval):
                try:
                    if not self._due():
                        continue
                    if conn is None:
                        conn = self._connect()
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.checkpoints += 1
                except (sqlite3.Error, OSError) as exc:
                    # A full disk or an I/O error: the commits report it too; look again later.
                    log_throttled(log, "warning", "WAL checkpoint failed", error=str(exc))
        finally:
            if conn is not None:
                conn.close()

    def catch_up(self) -> None:
        """Between two batches of the writer, once the WAL reached the cap and the thread has
        copied nearly all of it: copy the rest and wait for the readers still on old frames
        (RESTART), so that the next transaction starts the WAL over. A PASSIVE copy would not
        do: with the worker reading all the time, some read is nearly always open on old
        frames at the moment the writer begins, and the WAL grew without end. RESTART takes
        SQLite's write lock: ``write_lock`` (``app.db.holding_write_lock``) makes the bridge's
        other writers queue for it on the bridge's own locks, not in SQLite's busy handler."""
        frames, copied = self.wal_frames()
        now = time.monotonic()
        if frames < self._cap or frames - copied > RESTART_BACKLOG or now < self._next_catch_up:
            return  # below the bound, or the thread has more to copy first: no call waits
        # Not after every batch while a long read keeps it from succeeding.
        self._next_catch_up = now + self._interval
        try:
            if self._writer_conn is None:
                self._writer_conn = self._connect()
                # RESTART waits for the readers of older frames (the worker's short reads):
                # briefly, between two batches; if they take longer, it tries again later.
                self._writer_conn.execute(f"PRAGMA busy_timeout={RESTART_WAIT_MS}")
            with self._write_lock():
                restart = self._writer_conn.execute("PRAGMA wal_checkpoint(RESTART)")
                busy, _, _ = restart.fetchone()
            if not busy:
                self.catch_ups += 1
        except (sqlite3.Error, OperationalError) as exc:  # the latter: the write lock timed out
            log_throttled(log, "warning", "WAL checkpoint failed", error=str(exc))
            with contextlib.suppress(sqlite3.Error):
                if self._writer_conn is not None:
                    self._writer_conn.close()
            self._writer_conn = None
