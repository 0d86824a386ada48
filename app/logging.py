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
        structlog.processors.JSONRenderer()
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
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, redact, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        # Not cached: reconfiguring (tests, the CLI) must reach loggers already in use.
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
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
