"""Engine, session factory and the declarative base shared by every domain's models."""

from __future__ import annotations

import contextlib
import os
import queue
import sqlite3
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    DateTime,
    Integer,
    MetaData,
    create_engine,
    event,
    make_url,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

from app.config import IngestWriterMode, Settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

_HOLDS_WRITE_LOCK = "ctmm_bridge_holds_write_lock"
#: How long a writer waits for SQLite's write lock before the write fails.
WRITE_LOCK_TIMEOUT = 30.0

#: Integer primary keys: BIGINT on PostgreSQL, INTEGER (the rowid alias) on SQLite.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware timestamps on every backend (SQLite stores them naive, in UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use app.clock.utcnow()")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def sqlite_utc_text(value: datetime | None) -> str | None:
    """What ``UTCDateTime`` then SQLAlchemy's SQLite ``DATETIME`` make of ``value``, in one
    step: the ingest hot path and a worker's round convert many timestamps, most of them a
    few values (``now``, and the due times of the reads a round books), so the last ones
    converted are kept (tests check both conversions agree). Equal instants in different
    zones are one key, and have one text."""
    if value is None:
        return None
    text = _converted.get(value)
    if text is not None:
        return text
    if value.tzinfo is None:
        raise ValueError("naive datetimes are not stored; use app.clock.utcnow()")
    utc = value if value.tzinfo is UTC else value.astimezone(UTC)
    text = utc.isoformat(" ", "microseconds")[:-6]  # without "+00:00"
    if len(_converted) >= 64:
        _converted.clear()
    _converted[value] = text
    return text


_converted: dict[datetime, str] = {}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (any driver), or None (in memory, not SQLite)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def shown_url(url: str) -> str:
    """The database URL with its password hidden: for the banner and operators' messages."""
    return make_url(url).render_as_string(hide_password=True)


def sqlite_file_missing(settings: Settings) -> bool:
    """Opening a missing SQLite file would create it; a check or a read must not."""
    if not settings.is_sqlite:
        return False
    path = make_url(settings.database_url).database
    return path not in (None, "", ":memory:") and not Path(str(path)).exists()


def _driver_begin(conn: Any, statement: str) -> None:
    """``statement`` straight on the driver: SQLAlchemy's statement machinery (events,
    execution context, cursor) costs more than the BEGIN itself, on every transaction.
    Errors come out as SQLAlchemy's, as they would from ``exec_driver_sql``."""
    try:
        conn.connection.driver_connection.execute(statement)
    except sqlite3.Error as exc:
        raise DBAPIError.instance(statement, None, exc, sqlite3.Error) from exc


#: While the database cannot write, a worker tries again after this pause, doubling up to
#: ``RETRY_MAX_SECONDS``; answers already received from an upstream wait in memory meanwhile.
RETRY_SECONDS = 0.25
RETRY_MAX_SECONDS = 2.0


def unavailable(exc: BaseException) -> bool:
    """The database cannot write (disk full, I/O error, gone, locked past the timeout), as
    SQLAlchemy reports it or, from the raw-cursor statements of ``app.fastsql``, the driver:
    worth trying again later, unlike an error in what is written."""
    if isinstance(exc, OperationalError | sqlite3.OperationalError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    # Only a process on PostgreSQL has loaded the driver (and can see its errors). A failover
    # can leave connections on a standby: "read-only transaction" (an InternalError) passes.
    psycopg = sys.modules.get("psycopg")
    if psycopg is None:
        return False
    cause = exc.orig if isinstance(exc, DBAPIError) else exc
    return isinstance(cause, psycopg.OperationalError | psycopg.errors.ReadOnlySqlTransaction)


def dialect_name(conn: Connection | Session) -> str:
    """The database a connection or session is on (``sqlite``, ``postgresql``)."""
    return conn.get_bind().dialect.name if isinstance(conn, Session) else conn.dialect.name


class _FileLock:
    """An exclusive ``flock`` on a side file, shared by every process using the database.

    Held by at most one thread of this process at a time (the caller holds the thread lock).
    Uncontended, one non-blocking ``flock`` takes it. Contended, a waiter thread of this lock
    blocks in the kernel (``LOCK_EX``) and hands it over the moment the holder commits: no
    polling (a 1 ms poll woke the waiting process up to a thousand times a second and added
    up to a millisecond to every handover), and still a timeout, which a blocking ``flock``
    alone cannot have. A grant that comes after its caller gave up is released at once.
    Where ``fcntl`` does not exist (Windows) it does nothing and SQLite's busy handler waits.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None
        self._held = False
        self._requests: queue.SimpleQueue[_LockRequest | None] = queue.SimpleQueue()
        self._waiter: threading.Thread | None = None
        #: ``time.monotonic()`` of the last acquire that found another process holding the
        #: lock (0.0: never): how the worker learns that ingest wants the lock too.
        self.contended_at = 0.0

    def acquire(self, timeout: float) -> None:
        if fcntl is None:
            return
        if self._fd is None:
            # flock needs no write access: read-only lets processes of other users (with
            # access to the database) share the lock file.
            self._fd = os.open(self._path, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.contended_at = time.monotonic()
        else:
            self._held = True
            return
        request = _LockRequest()
        if self._waiter is None or not self._waiter.is_alive():
            self._waiter = threading.Thread(
                target=self._wait_in_kernel, args=(self._fd,), name="sqlite-lock", daemon=True
            )
            self._waiter.start()
        self._requests.put(request)
        if not request.granted.wait(timeout):
            with request.guard:
                if not request.granted.is_set():
                    request.abandoned = True
                    raise OperationalError(
                        "BEGIN IMMEDIATE", None, TimeoutError("database busy")
                    ) from None
        self._held = True

    def _wait_in_kernel(self, fd: int) -> None:
        """The waiter thread: takes requests in turn, each with a blocking ``flock``."""
        assert fcntl is not None
        while (request := self._requests.get()) is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:  # the file was closed (engine disposed): nobody waits any more
                return
            with request.guard:
                if not request.abandoned:
                    request.granted.set()
                    continue
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)

    def release(self) -> None:
        if self._held and self._fd is not None and fcntl is not None:
            self._held = False
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._waiter is not None:
            self._requests.put(None)
            self._waiter = None
        if self._fd is not None:
            os.close(self._fd)  # also releases the lock, should it be held
            self._fd = None
            self._held = False


class _LockRequest:
    """One contended acquire, handed to the waiter thread."""

    __slots__ = ("abandoned", "granted", "guard")

    def __init__(self) -> None:
        self.granted = threading.Event()
        self.guard = threading.Lock()
        self.abandoned = False


class _WriteLocks:
    """One SQLite engine's write locks: this process's threads queue on the thread lock, other
    processes on the lock file; taken in that order, released in the other."""

    __slots__ = ("file", "thread")

    def __init__(self, file: _FileLock | None) -> None:
        self.thread = threading.Lock()
        self.file = file

    def acquire(self, what: str) -> None:
        if not self.thread.acquire(timeout=WRITE_LOCK_TIMEOUT):
            raise OperationalError(what, None, TimeoutError("database busy"))
        if self.file is not None:
            try:
                self.file.acquire(timeout=WRITE_LOCK_TIMEOUT)
            except BaseException:
                self.thread.release()
                raise

    def release(self) -> None:
        try:
            if self.file is not None:
                self.file.release()
        finally:
            self.thread.release()


#: The bound of the SQLite WAL in frames (4 KiB pages: ~200 MiB) when ``serve``'s writer process
#: checkpoints it (``app.checkpoint``).
WAL_CAP_FRAMES = 50_000


#: Each SQLite engine's write locks (this process's, then the one shared with other processes).
_WRITE_LOCKS: weakref.WeakKeyDictionary[Engine, _WriteLocks] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def holding_write_lock(engine: Engine) -> Iterator[None]:
    """Hold the engine's write locks without a transaction, for work that takes SQLite's write
    lock on a connection of its own (the WAL restart of ``app.checkpoint``): the bridge's other
    writers then queue on these locks, which hand over at once, instead of sleeping in
    SQLite's busy handler in steps of up to 100 ms. Nothing to hold on PostgreSQL."""
    locks = _WRITE_LOCKS.get(engine)
    if locks is None:
        yield
        return
    locks.acquire("write lock")
    try:
        yield
    finally:
        locks.release()


def write_lock_contended_at(engine: Engine) -> float:
    """When (``time.monotonic()``) this process last found another process holding the
    engine's SQLite write lock; 0.0 if never, and always on PostgreSQL (no such lock)."""
    locks = _WRITE_LOCKS.get(engine)
    if locks is None or locks.file is None:
        return 0.0
    return locks.file.contended_at


def background_checkpoints(settings: Settings) -> bool:
    """Whether ``serve``'s writer process checkpoints the WAL (``app.checkpoint``): SQLite in a
    file, with the ingest writer in a process of its own (the default)."""
    return (
        settings.ingest_writer is IngestWriterMode.PROCESS
        and sqlite_file(settings.database_url) is not None
    )


def create_db_engine(settings: Settings, *, in_serve: bool = False) -> Engine:
    """An engine tuned for the backend: WAL + busy timeout on SQLite, a pool on PostgreSQL.

    WAL checkpoints (``app.checkpoint``): under the writer process's checkpointer, ``serve``'s
    own processes (``in_serve``) never copy the WAL inside a commit, and any other process (the
    CLI, a separate worker) only once the WAL outgrew its bound; otherwise SQLite's default."""
    url = settings.database_url
    if url.startswith("sqlite"):
        path = sqlite_file(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            # Each thread gets its own connection; SQLite connections are cheap to open.
            poolclass=NullPool if path is None else None,
            # The connection used last goes out first: SQLite drops a connection's page cache
            # whenever another connection wrote since its last transaction, so rotating
            # through the pool re-read the worker's pages every round (6x the reads).
            **({} if path is None else {"pool_use_lifo": True}),
        )
        synchronous = settings.sqlite_synchronous
        background = background_checkpoints(settings)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy, not the driver, decide when transactions begin.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            if background:
                cur.execute(f"PRAGMA wal_autocheckpoint={0 if in_serve else WAL_CAP_FRAMES}")
            cur.close()

        # SQLite has one writer at a time. Threads of this process that wait for it queue on
        # this lock, which hands over the moment a commit is on disk; waiting in SQLite's
        # busy handler instead sleeps in growing steps (up to 100 ms) and made ingest wait
        # behind the worker's upload batches for a second at a time. Other processes on the
        # same file (the ingest writer process, a separate `ctmm-bridge worker`) queue on a
        # lock file next to the database for the same reason.
        file_lock = _FileLock(path.with_name(path.name + ".writelock")) if path else None
        locks = _WRITE_LOCKS[engine] = _WriteLocks(file_lock)

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # IMMEDIATE takes the write lock up front, so writers queue on busy_timeout
            # instead of failing with "database is locked" on lock upgrade.
            if conn.get_execution_options().get("sqlite_deferred", False):
                _driver_begin(conn, "BEGIN")
                return
            locks.acquire("BEGIN IMMEDIATE")
            conn.info[_HOLDS_WRITE_LOCK] = True
            try:
                _driver_begin(conn, "BEGIN IMMEDIATE")
            except BaseException:
                _release(conn.info)
                raise

        def _release(info: dict[Any, Any]) -> None:
            if info.pop(_HOLDS_WRITE_LOCK, False):
                locks.release()

        # Released when the connection goes back to the pool: after COMMIT (and its fsync)
        # or ROLLBACK, not at SQLAlchemy's "commit" event, which comes before them.
        @event.listens_for(engine, "checkin")
        def _sqlite_checkin(_dbapi_conn: Any, record: Any) -> None:
            _release(record.info)

        @event.listens_for(engine, "invalidate")
        def _sqlite_invalidate(_dbapi_conn: Any, record: Any, _exc: Any) -> None:
            _release(record.info)

        if file_lock is not None:

            @event.listens_for(engine, "engine_disposed")
            def _sqlite_disposed(_engine: Any) -> None:
                file_lock.close()

        return engine
    return create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def create_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def read_only(engine: Engine) -> Engine:
    """The same engine for read-only work: on SQLite it does not take the write lock."""
    return engine.execution_options(sqlite_deferred=True)
