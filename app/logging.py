"""Structured logs: JSON in production, console in development; secrets never written."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO, cast

import orjson
import structlog

from app.config import LogFormat, Settings

_SECRET_KEYS = {
    "secret",
    "password",
    "passcode",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "mmapikey",
    "x-bridge-secret",
}
_PATH_SECRET = re.compile(r"(/mailmodo/)[^/\s?]+")
_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*(@[A-Za-z0-9.-]+\.[A-Za-z]{2,})")

#: Credentials in force; any log value containing one has it replaced (see ``add_secrets``).
_known_secrets: set[str] = set()


def add_secrets(*values: str | None) -> None:
    """Register credentials so that no log line can carry them, whatever the field."""
    _known_secrets.update(v for v in values if v and len(v) >= 6)


def mask_path(path: str) -> str:
    """Mailmodo callbacks carry their secret in the path; never log it."""
    return _PATH_SECRET.sub(r"\1***", path)


def mask_email(text: str) -> str:
    """``ann@example.com`` -> ``a***@example.com``: enough to tell recipients apart."""
    return _EMAIL.sub(r"\1***\2", text)


def _scrub(value: str, log_pii: bool) -> str:
    for secret in _known_secrets:
        if secret in value:
            value = value.replace(secret, "***")
    # The substring tests skip the regexes for the many values that cannot match (every log
    # line's level, time and message; the per-call line is on the ingest hot path).
    if "/mailmodo/" in value:
        value = mask_path(value)
    return value if log_pii or "@" not in value else mask_email(value)


def redactor(log_pii: bool) -> Any:
    def _redact(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
        for key, value in list(event.items()):
            if key.lower() in _SECRET_KEYS:
                event[key] = "***"
            elif isinstance(value, str):
                event[key] = _scrub(value, log_pii)
        return event

    return _redact


def configure_logging(settings: Settings) -> None:
    level = getattr(logging, settings.log_level.upper(), logging.INFO)
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=dumps_line)
        if settings.log_format is LogFormat.JSON
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    redact = redactor(settings.log_pii)
    add_secrets(
        settings.mailmodo_api_key,
        settings.clevertap_passcode,
        settings.admin_token,
        *settings.clevertap_webhook_secrets,
        *settings.mailmodo_webhook_secrets,
    )
    processors = [*shared, structlog.processors.format_exc_info, redact, renderer]
    global _hot
    stream = cast(TextIO, _OrderedStream(sys.stderr))
    _hot = (
        _HotPath(processors, renderer, stream, level, redact)
        if settings.log_format is LogFormat.JSON
        else None
    )
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # One write per line (PrintLogger writes the newline apart: another thread's line
        # could land between the two).
        logger_factory=structlog.WriteLoggerFactory(stream),
        # Not cached: reconfiguring (tests, the CLI) must reach loggers already in use.
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact,
                renderer,
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Access logs would carry Mailmodo path secrets; the bridge logs calls itself.
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Alembic announces its dialect whenever a revision is read (every /readyz).
    logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)


def dumps_line(event: dict[str, Any], **_: Any) -> str:
    """One JSON log line, compact, by orjson (a few µs less than ``json.dumps`` on every line);
    what orjson refuses (integers past 64 bits, say) still gets a line, by ``json.dumps``."""
    try:
        return orjson.dumps(event, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(event, default=repr)


@dataclass(frozen=True, slots=True)
class _HotPath:
    """What ``configure_logging`` set up for JSON lines, to write the hot ones directly."""

    processors: list[Any]
    renderer: Any
    stream: TextIO
    level: int
    redact: Callable[[Any, str, dict[str, Any]], dict[str, Any]]


_hot: _HotPath | None = None
#: The second ``iso_utc_now`` last formatted, and its text up to the seconds.
_stamp_second: tuple[int, str] = (-1, "")


def iso_utc_now() -> str:
    """Now as structlog's ``TimeStamper(fmt="iso", utc=True)`` writes it
    (``2026-12-01T14:00:00.123456Z``, no fraction at a whole second), at a third of its cost:
    the date and time of day are formatted once per second."""
    global _stamp_second
    now = time.time_ns() // 1000
    second, micros = divmod(now, 1_000_000)
    cached = _stamp_second
    if cached[0] != second:
        text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        cached = _stamp_second = (second, text)
    return f"{cached[1]}.{micros:06d}Z" if micros else f"{cached[1]}Z"


def hot_info(logger: Any, event: str, **fields: Any) -> None:
    """``logger.info(event, **fields)`` for the lines written once per inbound call and once
    per delivery: the same JSON line, key for key, as structlog's chain renders (context
    variables merged, level, UTC timestamp, the redactor, ``json.dumps``), written to the same
    stream, at a third of the chain's cost (bench/RESULTS.md). Anything else configured (the
    console format, ``structlog.testing.capture_logs``, another configuration) takes the
    ordinary path."""
    hot = _hot
    # capture_logs() swaps the contents of the same list: its last processor tells.
    processors = structlog.get_config()["processors"]
    if hot is None or processors is not hot.processors or processors[-1] is not hot.renderer:
        logger.info(event, **fields)
        return
    if hot.level > logging.INFO:
        return
    fields["event"] = event
    for key, value in structlog.contextvars.get_contextvars().items():
        fields.setdefault(key, value)
    # The level and the time are ours, not data: added after the redactor has read the rest.
    fields = hot.redact(None, "info", fields)
    fields["level"] = "info"
    fields["timestamp"] = iso_utc_now()
    line = dumps_line(fields) + "\n"
    # Lines written in one turn of an event loop go out in one write at its end (the loop is
    # busy with the calls meanwhile, and stderr writes each line through at once); a thread
    # without a loop writes at once. A line can come out behind a line of another thread or
    # a rarer line of the same turn, never more than a turn late.
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:  # a thread without a loop (the worker's SQL thread)
        loop = None
    global _flush_loop
    if loop is None or loop is not _flush_loop:
        if loop is None or (_flush_loop is not None and not _flush_loop.is_closed()):
            # No loop, or another loop's turn is pending: at once, behind what is held.
            _write_through(hot.stream, line)
            return
        _flush_hot(hot.stream)  # what a loop that closed before its turn ended left behind
        _flush_loop = loop
        loop.call_soon(_flush_hot, hot.stream)
    with _pending_lock:
        _pending.append(line)


#: The event loop that writes the held hot lines at the end of its turn, and those lines.
_flush_loop: asyncio.AbstractEventLoop | None = None
_pending: list[str] = []
#: Held while lines are taken from ``_pending`` and written, so no line overtakes another.
_pending_lock = threading.Lock()


def _write_through(stream: Any, text: str) -> None:
    """Write what is held, then ``text``, to the stream under ``stream`` (if it is ours)."""
    raw = stream.raw if isinstance(stream, _OrderedStream) else stream
    with _pending_lock:
        if _pending:
            text = "".join(_pending) + text
            _pending.clear()
        if text:
            raw.write(text)
            raw.flush()


def _flush_hot(stream: TextIO) -> None:
    global _flush_loop
    _flush_loop = None
    with contextlib.suppress(Exception):  # a closed stream at exit: nothing to do
        _write_through(stream, "")


class _OrderedStream:
    """The log stream, writing the hot lines an event loop holds before any other line, so
    every line keeps its place (structlog's and the standard library's lines come here)."""

    def __init__(self, raw: TextIO) -> None:
        self.raw = raw

    def write(self, text: str) -> int:
        _write_through(self, text)
        return len(text)

    def flush(self) -> None:
        pass  # every write is flushed

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


@atexit.register
def _flush_at_exit() -> None:
    hot = _hot
    if hot is not None:
        _flush_hot(hot.stream)


class Throttle:
    """Repeated identical events logged once per interval, with how many were left out.

    A failing disk or database makes every call fail the same way: thousands of identical
    lines per minute bury everything else and fill the disk further. ``allow(key)`` says
    whether to log now: ``None`` (stay quiet), else the number of events with that key left
    out since the last line (0 the first time), to log as ``repeated=``. Thread-safe (the
    writer thread, the event loop and the worker threads share one).
    """

    MAX_KEYS = 1024

    def __init__(
        self, interval_seconds: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval_seconds
        self._clock = clock
        self._lock = threading.Lock()
        #: key -> (when it was last logged, events left out since)
        self._seen: dict[Hashable, tuple[float, int]] = {}

    def allow(self, key: Hashable) -> int | None:
        now = self._clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.interval:
                self._seen[key] = (seen[0], seen[1] + 1)
                return None
            if seen is None and len(self._seen) >= self.MAX_KEYS:
                self._seen.clear()  # many distinct errors: forget, rather than grow
            self._seen[key] = (now, 0)
            return 0 if seen is None else seen[1]


#: The process's throttle, for errors that repeat per call or per batch.
THROTTLE = Throttle()


def log_throttled(
    logger: Any, level: str, event: str, *, key: Hashable = None, **fields: Any
) -> None:
    """``logger.<level>(event, **fields)``, at most once per ``THROTTLE.interval`` for the same
    ``(event, key)``; the line says how many identical ones were left out (``repeated``)."""
    left_out = THROTTLE.allow((event, key))
    if left_out is None:
        return
    if left_out:
        fields["repeated"] = left_out
        fields["interval_seconds"] = THROTTLE.interval
    getattr(logger, level)(event, **fields)
