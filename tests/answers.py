"""Building upstream answers for the pure outcome tests (no HTTP)."""

from __future__ import annotations

from typing import Any

import orjson

from app.upstream import UpstreamResponse


def resp(
    status: int, body: Any = None, *, retry_after: float | None = None, raw: str | None = None
) -> UpstreamResponse:
    """An answer as the typed client returns it: ``body`` as JSON, or ``raw`` text."""
    text = raw if raw is not None else ("" if body is None else orjson.dumps(body).decode())
    try:
        parsed = orjson.loads(text) if text else None
    except orjson.JSONDecodeError:
        parsed = None
    return UpstreamResponse(
        status_code=status, text=text, json=parsed, duration_ms=12.5, retry_after=retry_after
    )
