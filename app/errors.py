"""Every JSON error answer of the bridge, and the one place it is rendered.

The hierarchy (each a ``BridgeError``, answered as ``{"error": ..., "detail": ...}``)::

    BridgeError                 status, error, detail, headers
     ├── InboundError           a refused webhook call (app.inbound.service); 401 adds
     │    └── BodyTooLarge      WWW-Authenticate: Basic
     ├── AdminError             a refused operator request or CLI command (app.admin.service)
     └── DatabaseNotReady       the PostgreSQL schema is behind (app.main)

Raised in a route, a ``BridgeError`` is answered by the app's handler (``app.main``); the
webhook pipeline and the admin route class call ``response()`` themselves; the CLI prints
``str(error)`` and maps ``status`` to an exit code. FastAPI's own HTTP errors and unexpected
exceptions are answered through the same ``error_response``.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON answer serialised by orjson (no content negotiation, no validation)."""
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def error_response(
    status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None
) -> Response:
    """THE shape of every error answer: ``{"error": ..., "detail": ...}``."""
    try:
        return json_response({"error": error, "detail": detail}, status, headers)
    except (TypeError, RecursionError):  # a detail quoting input orjson cannot write back
        return json_response(
            {"error": error, "detail": "(not shown: nests too deeply)"}, status, headers
        )


class BridgeError(Exception):
    """A refusal with an HTTP status, a short error, an optional detail and headers."""

    def __init__(
        self, status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers

    def response(self) -> Response:
        return error_response(self.status, self.error, self.detail, self.headers)

    def __str__(self) -> str:
        if self.detail is None:
            return self.error
        detail = self.detail if isinstance(self.detail, str) else _dumps(self.detail)
        return f"{self.error}: {detail}"


def _dumps(detail: Any) -> str:
    try:
        return orjson.dumps(detail).decode()
    except (TypeError, RecursionError):
        return "(not shown: nests too deeply)"


def internal_error(exc: BaseException) -> Response:
    """The answer to an exception nothing else handled: its type only, never its message."""
    return error_response(500, "internal error", type(exc).__name__)


def short_error(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (else its type), at most ``limit`` characters."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "…"
