"""What every upstream shares: the response record and errors of its typed client, the
``Outcome`` of an attempt, and the generic HTTP answer taxonomy its ``outcomes.py`` builds on.

Exceptions:
    UpstreamError        base; the call may or may not have reached the upstream
    ├── UpstreamTimeout  no answer in time (connect, read, write or pool)
    └── UpstreamUnreachable  the connection could not be made or broke

Generic classes of answer (each upstream's ``outcomes.py`` adds its own, e.g. Mailmodo's
``success: false`` on a 2xx or CleverTap's per-record codes):

==========================  ===================================================
401 / 403                    credentials wrong: upstream paused, no attempt used
429                          rate limited: deferred, no attempt used
408, 5xx, timeout, network   retried on the schedule, honouring ``Retry-After``
other 4xx                    failed for good, reason kept
==========================  ===================================================

Clients never retry; the worker classifies (``<upstream>/outcomes.py``) and schedules
(``app.outbox.policy``).
"""

from __future__ import annotations

import codecs
import contextlib
import email.message
import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, Literal

import httpcore
import httpx
import orjson

from app import __version__
from app.clock import utcnow
from app.httppool import FastPool, FastTransport

MAX_KEPT_BODY = 2048
REASON_LIMIT = 1000


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
    """One pooled client per upstream with explicit timeouts (connect at most 5 s).

    Its connections are ``app.httppool``'s (a quarter of httpcore's CPU per request), unless
    the environment names a proxy (HTTPS_PROXY and friends): then httpx's own transport,
    which honours it.
    """
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    if transport is None and not _environment_proxies():
        transport = FastTransport(limits=limits)
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        headers={"User-Agent": f"ctmm-bridge/{__version__}", **headers},
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        limits=limits,
        transport=transport,
    )


def _environment_proxies() -> dict[str, str | None]:
    from httpx._utils import get_environment_proxies  # what httpx itself would use

    return get_environment_proxies()


async def send(client: httpx.AsyncClient, request: httpx.Request) -> UpstreamResponse:
    """Send one request and read the whole answer, mapping transport failures to our errors."""
    started = time.perf_counter()
    with _upstream_errors(started):
        response = await client.send(request)
    return _upstream_response(
        response.status_code,
        response.text,
        response.content,
        response.headers.get("retry-after"),
        _ms(started),
    )


def _upstream_response(
    status_code: int, text: str, content: bytes, retry_after: str | None, duration: float
) -> UpstreamResponse:
    try:
        body: Any = orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        body = None
    return UpstreamResponse(
        status_code=status_code,
        text=text,
        json=body,
        duration_ms=duration,
        retry_after=parse_retry_after(retry_after),
    )


@contextlib.contextmanager
def _upstream_errors(started: float) -> Iterator[None]:
    """httpx's and httpcore's failures as ours: no answer in time, no connection, or (e.g. an
    undecodable body) an answer we cannot read: the call may have been taken, we cannot tell."""
    try:
        yield
    except (httpcore.TimeoutException, httpx.TimeoutException) as exc:
        raise UpstreamTimeout(f"timeout: {type(exc).__name__}", _ms(started)) from exc
    except _TRANSPORT_ERRORS as exc:
        raise UpstreamUnreachable(f"{type(exc).__name__}: {exc}", _ms(started)) from exc
    except httpx.HTTPError as exc:
        raise UpstreamError(f"{type(exc).__name__}: {exc}", _ms(started)) from exc


#: ``httpx.TransportError`` and what httpx's transport would map to it (connection, protocol,
#: proxy): respx's fakes raise the former, the pool the latter.
_TRANSPORT_ERRORS = (
    httpx.TransportError,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.ProxyError,
    httpcore.UnsupportedProtocol,
)


class DirectPoster:
    """POSTs of one pooled client, built and sent without httpx's per-request layers.

    ``build_request`` merges the base URL and the client's headers for every call, and
    ``client.send`` runs the auth flow, redirect and cookie handling; then httpx's transport
    maps its request and response objects onto httpcore's and back: together ~115 µs of CPU
    per request, two thirds of a delivery's HTTP (bench/README.md). A delivery needs none of
    it: the key is a header, redirects are not followed and cookies are not kept. So the
    headers are merged once, the URL of each path is parsed once, and an httpcore request goes
    straight to the client's pool (``app.httppool``; respx fakes it there in the tests), with
    the same timeouts and error mapping. A client on another transport (a proxy named in the
    environment, a test's own) keeps ``client.send``.
    """

    #: Parsed URLs kept per path (campaign ids repeat; a bound, should they not).
    MAX_URLS = 1024

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client
        # httpx has no public accessor for these; the tests check the direct path is taken.
        mounted = bool(getattr(client, "_mounts", None))
        transport = None if mounted else getattr(client, "_transport", None)
        pool = getattr(transport, "_pool", None) if isinstance(transport, FastTransport) else None
        self.pool: FastPool | None = pool if isinstance(pool, FastPool) else None
        base = client.base_url
        self._base = base
        # The answer is read as it comes: ask for it uncompressed (httpx's default asks for
        # gzip, which ``client.send`` would have decoded).
        headers = [(k, v) for k, v in client.headers.raw if k.lower() != b"accept-encoding"]
        self._headers = [
            (b"Host", base.netloc),
            *headers,
            (b"Accept-Encoding", b"identity"),
            (b"Content-Type", b"application/json"),
        ]
        self._extensions = {"timeout": client.timeout.as_dict()}
        self._urls: dict[str, httpcore.URL] = {}

    def _url(self, path: str) -> httpcore.URL:
        url = self._urls.get(path)
        if url is None:
            if len(self._urls) >= self.MAX_URLS:
                self._urls.clear()
            full = self._base.copy_with(
                raw_path=self._base.raw_path.rstrip(b"/") + path.encode("ascii")
            )
            url = self._urls[path] = httpcore.URL(
                scheme=full.raw_scheme, host=full.raw_host, port=full.port, target=full.raw_path
            )
        return url

    async def post_json(self, path: str, content: bytes) -> UpstreamResponse:
        """POST ``content`` (JSON) to ``path`` under the base URL; the whole answer read."""
        pool = self.pool
        if pool is None:
            request = self._client.build_request(
                "POST", path, content=content, headers={"Content-Type": "application/json"}
            )
            return await send(self._client, request)
        core_request = httpcore.Request(
            b"POST",
            self._url(path),
            headers=[*self._headers, (b"Content-Length", b"%d" % len(content))],
            content=content,
            extensions=self._extensions,
        )
        started = time.perf_counter()
        with _upstream_errors(started):
            response = await pool.handle_async_request(core_request)
            try:
                body = await response.aread()
            finally:
                await response.aclose()
            headers = httpx.Headers(response.headers)
            if headers.get("content-encoding", "identity").lower() != "identity":
                # Compressed all the same: httpx's decoders, as ``client.send`` would.
                compressed = httpx.Response(
                    response.status, headers=headers, stream=httpx.ByteStream(body)
                )
                body = compressed.read()
        text = body.decode(_charset(headers.get("content-type")), errors="replace")
        return _upstream_response(
            response.status, text, body, headers.get("retry-after"), _ms(started)
        )


@functools.lru_cache(maxsize=64)
def _charset(content_type: str | None) -> str:
    """The answer's declared charset if Python knows it, else UTF-8: ``Response.text``'s
    rule, by the same parser httpx uses. Kept per header value: an upstream answers every
    delivery with the same one, and parsing it was ~0.7 % of a drain's samples."""
    if content_type:
        message = email.message.Message()
        message["content-type"] = content_type
        declared = message.get_content_charset()
        if declared:
            with contextlib.suppress(LookupError):
                return codecs.lookup(declared).name
    return "utf-8"


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


# -- what an attempt's answer means ------------------------------------------------------------


class AttemptOutcome(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    RATE_LIMITED = "rate_limited"
    FAILED = "failed"
    AUTH_ERROR = "auth_error"


@dataclass(frozen=True, slots=True)
class Outcome:
    """One attempt's answer as the state machine reads it; built by an upstream's
    ``outcomes.py``, never by the worker from status codes."""

    kind: AttemptOutcome
    status_code: int | None
    reason: str | None
    duration_ms: float
    response_body: str | None = None
    ref: str | None = None
    retry_after: float | None = None


def answer_message(body: Any) -> str | None:
    """The human message of a JSON error body (``message``/``error``/``detail``/``errors``)."""
    if not isinstance(body, dict):
        return None
    parts: list[str] = []
    for key in ("message", "error", "Message", "detail"):
        value = body.get(key)
        if isinstance(value, str) and value and value not in parts:
            parts.append(value)
    errors = body.get("errors")
    if isinstance(errors, list) and errors:
        rendered = []
        for err in errors[:5]:
            if isinstance(err, dict):
                rendered.append(", ".join(f"{k}: {v}" for k, v in err.items()))
            else:
                rendered.append(str(err))
        parts.append("errors: " + "; ".join(rendered))
    return " — ".join(parts) if parts else None


def answer_reason(resp: UpstreamResponse, prefix: str) -> str:
    """``<prefix> HTTP <code>: <message>``, bounded to ``REASON_LIMIT`` bytes."""
    message = answer_message(resp.json) or resp.text.strip()[:300] or "(empty body)"
    return truncate_utf8(f"{prefix} HTTP {resp.status_code}: {message}", REASON_LIMIT)


def classify_http_error(resp: UpstreamResponse, upstream: str, common: dict[str, Any]) -> Outcome:
    """The generic taxonomy of a non-success answer (see the module doc)."""
    code = resp.status_code
    if code in (401, 403):
        return Outcome(
            AttemptOutcome.AUTH_ERROR,
            reason=answer_reason(resp, f"{upstream} rejected the credentials:"),
            **common,
        )
    if code == 429:
        return Outcome(
            AttemptOutcome.RATE_LIMITED,
            reason=answer_reason(resp, f"{upstream} throttled:"),
            retry_after=resp.retry_after,
            **common,
        )
    if code == 408 or code >= 500:
        return Outcome(
            AttemptOutcome.RETRY,
            reason=answer_reason(resp, f"{upstream} unavailable:"),
            retry_after=resp.retry_after,
            **common,
        )
    return Outcome(
        AttemptOutcome.FAILED, reason=answer_reason(resp, f"{upstream} refused:"), **common
    )


def classify_error(exc: UpstreamError, upstream: str) -> Outcome:
    """No answer (timeout, network, unreadable): always retried."""
    if isinstance(exc, UpstreamTimeout):
        what = "did not answer in time"
    elif isinstance(exc, UpstreamUnreachable):
        what = "unreachable"
    else:
        what = "gave an answer that could not be read"
    return Outcome(
        AttemptOutcome.RETRY,
        status_code=None,
        duration_ms=exc.duration_ms,
        reason=truncate_utf8(f"{upstream} {what}: {exc}", REASON_LIMIT),
    )


# -- cheap live checks (``ctmm-bridge check``) --------------------------------------------------

CheckStatus = Literal["ok", "warn", "fail"]


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    status: CheckStatus
    message: str


def check_message(response: httpx.Response) -> str:
    """The message of a live check's answer, at most 200 characters."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200]
    if isinstance(body, dict):
        for key in ("message", "error", "Message", "detail"):
            if isinstance(body.get(key), str):
                return str(body[key])[:200]
    return response.text.strip()[:200]


def check_get(
    url: str, headers: dict[str, str], timeout: float, transport: httpx.BaseTransport | None
) -> httpx.Response:
    """One blocking GET for a live check (the CLI has no event loop to share)."""
    headers = {"User-Agent": f"ctmm-bridge/{__version__}", "Accept": "application/json", **headers}
    with httpx.Client(timeout=timeout, transport=transport) as client:
        return client.get(url, headers=headers)


def check_unreachable(name: str, base: str, exc: httpx.HTTPError, timeout: float) -> CheckResult:
    why = f"no answer within {timeout:g} s" if isinstance(exc, httpx.TimeoutException) else exc
    return CheckResult(name, "fail", f"cannot reach {base}: {why}")
