"""What the typed upstream clients share: the response record and the errors they raise.

Exceptions:
    UpstreamError        base; the call may or may not have reached the upstream
    ├── UpstreamTimeout  no answer in time (connect, read, write or pool)
    └── UpstreamUnreachable  the connection could not be made or broke

Clients never retry; the worker classifies and schedules (``app.outbox.policy``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson

from app import __version__
from app.clock import utcnow

MAX_KEPT_BODY = 2048


class UpstreamError(Exception):
    def __init__(self, message: str, duration_ms: float) -> None:
        super().__init__(message)
        self.duration_ms = duration_ms


class UpstreamTimeout(UpstreamError):
    pass


class UpstreamUnreachable(UpstreamError):
    pass


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status_code: int
    text: str
    json: Any
    duration_ms: float
    retry_after: float | None

    @property
    def kept_body(self) -> str:
        """The body as stored with an attempt: at most 2 KB."""
        return truncate_utf8(self.text, MAX_KEPT_BODY)


def truncate_utf8(text: str, max_bytes: int) -> str:
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    return raw[:max_bytes].decode("utf-8", errors="ignore")


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - utcnow()).total_seconds())


def pooled_client(
    *,
    base_url: str,
    headers: dict[str, str],
    timeout: float,
    max_connections: int,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """One pooled client per upstream with explicit timeouts (connect at most 5 s)."""
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        headers={"User-Agent": f"ctmm-bridge/{__version__}", **headers},
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        transport=transport,
    )


async def send(client: httpx.AsyncClient, request: httpx.Request) -> UpstreamResponse:
    """Send one request and read the whole answer, mapping transport failures to our errors."""
    started = time.perf_counter()
    try:
        response = await client.send(request)
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout(f"timeout: {type(exc).__name__}", _ms(started)) from exc
    except httpx.TransportError as exc:
        raise UpstreamUnreachable(f"{type(exc).__name__}: {exc}", _ms(started)) from exc
    except httpx.HTTPError as exc:
        # e.g. an undecodable body: the call may have been taken, but we cannot tell.
        raise UpstreamError(f"{type(exc).__name__}: {exc}", _ms(started)) from exc
    duration = _ms(started)
    text = response.text
    try:
        body: Any = orjson.loads(response.content) if response.content else None
    except orjson.JSONDecodeError:
        body = None
    return UpstreamResponse(
        status_code=response.status_code,
        text=text,
        json=body,
        duration_ms=duration,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
    )


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
