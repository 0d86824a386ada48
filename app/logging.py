"""Structured logs: JSON in production, console in development; secrets never written."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

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


def mask_path(path: str) -> str:
    """Mailmodo callbacks carry their secret in the path; never log it."""
    return _PATH_SECRET.sub(r"\1***", path)


def _redact(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in list(event):
        if key.lower() in _SECRET_KEYS:
            event[key] = "***"
        elif key == "path" and isinstance(event[key], str):
            event[key] = mask_path(event[key])
    return event


def configure_logging(settings: Settings) -> None:
    level = getattr(logging, settings.log_level.upper(), logging.INFO)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if settings.log_format is LogFormat.JSON
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=renderer,
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
