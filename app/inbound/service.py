"""The inbound line every webhook call follows, from the route to the outbox (``receive``):
authenticate, read the body (bounded), parse it with the source's parser, compute the dedup
key (``app.inbound.dedup``), accept it into the writer, answer. Authenticated calls that are
refused are kept for the operator. The sources plug in as ``WebhookKind``s
(``from_clevertap``, ``from_mailmodo``); nothing here calls back into a route."""

from __future__ import annotations

import asyncio
import base64
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson
import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from app.caching import text_cache
from app.clock import utcnow
from app.config import Settings
from app.errors import BridgeError, error_response, json_response
from app.logging import hot_info, log_throttled
from app.metrics import observe_inbound
from app.outbox.models import CallStatus, Source
from app.outbox.schemas import IngestRecord, IngestResult
from app.outbox.writer import UnstorableRecord, Writer, WriterUnavailable
from app.security import Credentials

log = structlog.get_logger(__name__)

JSON_TYPES = ("application/json",)
P = TypeVar("P")


_BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="ctmm-bridge"'}


class InboundError(BridgeError):
    """An answer other than 200 to a webhook call; a 401 asks for Basic credentials."""

    def __init__(self, status: int, error: str, detail: Any = None) -> None:
        super().__init__(status, error, detail, _BASIC_CHALLENGE if status == 401 else None)


def secret_matches(candidate: str | None, secrets: Sequence[str]) -> bool:
    """Constant-time comparison against every configured secret (rotation keeps several)."""
    if not candidate:
        return False
    given = candidate.encode()
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(given, secret.encode())
    return matched


def clevertap_credential(request: Request) -> str | None:
    """The secret of a CleverTap call: the Basic-auth password, else ``X-Bridge-Secret``."""
    headers = header_map(request)
    header = headers.get("x-bridge-secret")
    if header:
        return header.strip()
    auth = headers.get("authorization")
    if auth and auth[:6].lower() == "basic ":
        return _basic_password(auth[6:].strip())
    return None


@text_cache(maxsize=64)
def _basic_password(token: str) -> str | None:
    """Cached: a CleverTap account sends the same Authorization header on every call."""
    try:
        decoded = base64.b64decode(token, validate=True).decode("utf-8")
    except ValueError:  # not base64 (binascii.Error), not ASCII, not UTF-8 inside
        return None
    _user, sep, password = decoded.partition(":")
    return password if sep else None


def header_map(request: Request) -> dict[str, str]:
    """The request's headers as one dict (names lower-case, the first of repeated ones), built
    once per call: each ``request.headers.get`` scans and decodes the whole header list."""
    scope = request.scope
    headers: dict[str, str] | None = scope.get("ctmm_headers")
    if headers is None:
        headers = {}
        for name, value in scope["headers"]:
            key = name.decode("latin-1").lower()
            if key not in headers:
                headers[key] = value.decode("latin-1")
        scope["ctmm_headers"] = headers
    return headers


async def read_body(request: Request, max_bytes: int, keep_bytes: int = 16_384) -> bytes:
    """The body, refusing (413) as soon as it is known to exceed ``max_bytes``.

    The partial body read so far travels with the error so the rejection can be kept.
    """
    headers = header_map(request)
    declared = headers.get("content-length")
    too_large = declared is not None and declared.isdigit() and int(declared) > max_bytes
    if too_large and headers.get("expect", "").strip().lower() == "100-continue":
        # The sender waits to be told to send: refused at once, nothing read (reading would
        # answer "100 Continue" and invite the whole body).
        raise BodyTooLarge(max_bytes, int(declared or 0), b"")
    # When the declared size is already too large, read only what will be kept of it.
    cap = min(max_bytes, keep_bytes) if too_large else max_bytes
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        chunks.append(chunk)
        if size > cap:
            break
    if too_large or size > max_bytes:
        # Keep no more than the limit itself, however much the caller sent.
        raise BodyTooLarge(
            max_bytes,
            int(declared) if too_large and declared else size,
            b"".join(chunks)[: min(max_bytes, keep_bytes)],
        )
    return b"".join(chunks)


class BodyTooLarge(InboundError):
    def __init__(self, limit: int, size: int, partial: bytes) -> None:
        super().__init__(
            413, "body too large", {"limit_bytes": limit, "received_bytes_at_least": size}
        )
        self.partial = partial


def check_content_type(request: Request) -> str | None:
    """415 unless the call says it is JSON in UTF-8, not compressed (a missing Content-Type is
    given the benefit). Without this a gzipped or Latin-1 body got "malformed JSON", which
    sends the sender looking in the wrong place."""
    headers = header_map(request)
    transfer = headers.get("transfer-encoding")
    if transfer is not None and transfer.strip().lower() not in ("chunked", "identity"):
        # "gzip, chunked": the server undoes the chunking only; the rest would be parsed as
        # JSON (RFC 9112 answers an unknown transfer coding with 501: a 4xx here, kept).
        raise InboundError(
            415,
            "unsupported transfer encoding",
            {"transfer_encoding": transfer, "expected": "chunked or none"},
        )
    encoding = headers.get("content-encoding")
    if encoding is not None and encoding.strip().lower() not in ("", "identity"):
        raise InboundError(
            415,
            "unsupported content encoding",
            {"content_encoding": encoding, "expected": "an uncompressed body"},
        )
    content_type = headers.get("content-type")
    if content_type is None:
        return None
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    if not (media in JSON_TYPES or media.endswith("+json")):
        raise InboundError(
            415,
            "unsupported media type",
            {"content_type": content_type, "expected": "application/json"},
        )
    if params:
        for param in params.split(";"):
            name, _, value = param.partition("=")
            charset = value.strip().strip('"').lower()
            if name.strip().lower() == "charset" and charset not in ("utf-8", "utf8"):
                raise InboundError(
                    415,
                    "unsupported charset",
                    {"content_type": content_type, "expected": "charset=utf-8 (JSON is UTF-8)"},
                )
    return content_type


#: Limits of orjson on JSON that is otherwise well-formed (RFC 8259 sets none on nesting or on
#: a number's size): such a call is JSON the bridge cannot process, a 422. (Lone surrogate
#: escapes, which RFC 8259 also allows, stay a 400: no text can hold them.)
_BEYOND_PARSER = ("depth limit exceeded", "number is infinity")


def parse_json(body: bytes) -> Any:
    if not body.strip():
        raise InboundError(400, "malformed JSON", "the body is empty")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        message = str(exc)
        if message.startswith(_BEYOND_PARSER):
            raise InboundError(422, "the call cannot be processed", message) from None
        raise InboundError(400, "malformed JSON", message) from None


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_TARGET = 256


def check_target(target: str, what: str) -> str:
    """A path id we can store and put in an upstream URL (422 otherwise)."""
    if not target or len(target) > MAX_TARGET or _CONTROL.search(target) or not target.strip("."):
        raise InboundError(
            422,
            f"invalid {what}",
            {"hint": f"1 to {MAX_TARGET} characters, no control characters, not only dots"},
        )
    return target


def storable(text: str | None, limit: int | None = None) -> str | None:
    """Text every database can hold: NUL replaced, optionally cut to ``limit`` characters."""
    if text is None:
        return None
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    return text if limit is None else text[:limit]


def request_id(request: Request) -> str | None:
    # scope["state"] directly: ``request.state`` builds a wrapper object on every access.
    value: str | None = request.scope.get("state", {}).get("request_id")
    return value


async def keep_rejected(
    writer: Writer,
    *,
    source: Source,
    route: str,
    target: str | None,
    request: Request,
    body: bytes,
    error: InboundError,
    max_bytes: int,
) -> None:
    """Store an authenticated call we refused, truncated, with the reason we gave."""
    text = storable(body[:max_bytes].decode("utf-8", errors="replace")) or ""
    reason = error.error if error.detail is None else f"{error.error}: {_short(error.detail)}"
    record = IngestRecord(
        source=source,
        route=route,
        target=storable(_CONTROL.sub("", target), MAX_TARGET) if target else None,
        status=CallStatus.REJECTED,
        http_status=error.status,
        received_at=utcnow(),
        body=text,
        body_truncated=len(body) > max_bytes or isinstance(error, BodyTooLarge),
        content_type=storable(header_map(request).get("content-type"), 128),
        reason=storable(reason),
        request_id=request_id(request),
    )
    try:
        await writer.submit(record)
    except (WriterUnavailable, UnstorableRecord):
        log_throttled(log, "error", "could not keep a rejected call", key=route, route=route)


def _short(detail: Any, limit: int = 2000) -> str:
    try:
        text = detail if isinstance(detail, str) else orjson.dumps(detail).decode()
    except (TypeError, RecursionError):  # quotes input nested too deeply to write back
        text = "(not shown: nests too deeply)"
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass(frozen=True, slots=True)
class InboundCall:
    """What one webhook call brings besides its meaning: what its records are built from."""

    request: Request
    target: str | None
    body: bytes
    payload: Any
    content_type: str | None
    settings: Settings

    @property
    def request_id(self) -> str | None:
        return request_id(self.request)

    @property
    def deduplicated(self) -> bool:
        """Whether calls are keyed at all (``BRIDGE_DEDUP_WINDOW_SECONDS`` > 0)."""
        return self.settings.dedup_window_seconds > 0


class WebhookKind(Generic[P]):
    """One kind of webhook call: who may send it, how it is read, keyed and stored.

    Subclasses (``from_clevertap``, ``from_mailmodo``) only say what differs; ``receive`` runs
    the same line for all of them. ``P`` is what the source's parser returns.
    """

    source: Source
    route: str
    unauthorized: InboundError

    def authenticated(self, request: Request, credentials: Credentials, secret: str | None) -> bool:
        raise NotImplementedError

    def check_target(self, target: str | None) -> str | None:
        """The path id as stored and sent upstream; 422 for one that cannot be (taken as
        it is by default)."""
        return target

    def parse(self, payload: Any, target: str | None) -> P:
        """What the call means; ``InboundError`` (422) when it cannot be read."""
        raise NotImplementedError

    def dedup_key(self, call: InboundCall, parsed: P) -> str:
        raise NotImplementedError

    def record(self, parsed: P, call: InboundCall, dedup_key: str | None) -> IngestRecord:
        raise NotImplementedError

    def answer(self, result: IngestResult, parsed: P) -> dict[str, Any]:
        raise NotImplementedError

    def records(self, parsed: P, call: InboundCall) -> list[IngestRecord]:
        """What the call is stored as: one record keyed as a whole (the default), or several
        when its items are deduplicated one by one (``from_mailmodo``)."""
        key = self.dedup_key(call, parsed) if call.deduplicated else None
        return [self.record(parsed, call, key)]

    def answer_all(self, results: list[IngestResult], parsed: P) -> dict[str, Any]:
        """The answer to the call, from what storing its records came to."""
        return self.answer(results[0], parsed)


async def receive(
    request: Request,
    kind: WebhookKind[P],
    *,
    writer: Writer,
    settings: Settings,
    credentials: Credentials,
    target: str | None,
    secret: str | None = None,
) -> Response:
    """The line every webhook call follows: authenticate (401, nothing kept), bounded read
    (413), media type (415), JSON (400), the path id and the source's parser (422), the dedup
    key, the record into the writer, the answer. Refusals after authentication are kept for
    the operator; a database failure is a 503 so the sender retries."""
    route = kind.route
    if not kind.authenticated(request, credentials, secret):
        observe_inbound(route, 401)
        log.warning("inbound call refused: missing or wrong secret", route=route, status=401)
        return kind.unauthorized.response()
    body = b""
    try:
        body = await read_body(request, settings.max_body_bytes, settings.rejected_body_bytes)
        content_type = check_content_type(request)
        payload = parse_json(body)
        target = kind.check_target(target)
        parsed = kind.parse(payload, target)
        call = InboundCall(request, target, body, payload, content_type, settings)
        records = kind.records(parsed, call)
        if len(records) == 1:
            results = [await writer.submit(records[0])]
        else:
            results = await _submit_all(writer, records)
        answer = kind.answer_all(results, parsed)
    except UnstorableRecord as exc:
        error = InboundError(422, "the call holds values that cannot be stored", str(exc))
        return await _refuse(request, writer, settings, kind.source, route, target, body, error)
    except (RecursionError, orjson.JSONEncodeError, OverflowError) as exc:
        # JSON the parser accepted but that cannot be mapped or serialised again: nesting past
        # orjson's 254 levels or Python's recursion limit, integers past 64 bits. A 4xx, kept:
        # a 5xx would make the sender retry the same call forever.
        error = InboundError(422, "the call cannot be processed", _unprocessable(exc))
        return await _refuse(request, writer, settings, kind.source, route, target, body, error)
    except InboundError as exc:
        if isinstance(exc, BodyTooLarge):
            body = exc.partial
        return await _refuse(request, writer, settings, kind.source, route, target, body, exc)
    except ClientDisconnect:
        # The sender went away (or the server closed a stalled body or is shutting down):
        # nothing was stored and nobody reads this answer.
        observe_inbound(route, 499)
        log.info("inbound call abandoned before its body arrived", route=route)
        return error_response(400, "client disconnected")
    except WriterUnavailable as exc:
        observe_inbound(route, 503)
        log_throttled(
            log, "error", "inbound call not stored", key=route, route=route, error=str(exc)
        )
        return error_response(
            503, "temporarily unavailable", "the database is not available", {"Retry-After": "5"}
        )
    observe_inbound(route, 200, answer)
    _log_accepted(route, answer)
    return json_response(answer)


async def _submit_all(writer: Writer, records: list[IngestRecord]) -> list[IngestResult]:
    """Submit every record (the writer commits them together when it can) and wait for all.

    Records may commit apart: when the writer is unavailable for one, that is raised first
    (a 503: the sender retries, and the items stored meanwhile come back as duplicates);
    an item that cannot be stored is a 422 whose detail says the others were stored (the
    whole body is kept as rejected, so the operator still has that item)."""
    outcomes = await asyncio.gather(*(writer.submit(r) for r in records), return_exceptions=True)
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    if failures:
        for failure in failures:
            if isinstance(failure, WriterUnavailable):
                raise failure
        first = failures[0]
        stored = len(outcomes) - len(failures)
        if isinstance(first, UnstorableRecord) and stored:
            raise UnstorableRecord(f"{first}; the call's {stored} other items were stored")
        raise first
    return [o for o in outcomes if not isinstance(o, BaseException)]


def _log_accepted(route: str, answer: dict[str, Any]) -> None:
    """The operator's line for every stored call. On the ingest hot path, so only numbers and
    the route's name (no email, no path id, no body): the redactor has little to scan, and the
    request id comes from the call's context (``BridgeApp``)."""
    if answer.get("test"):
        hot_info(log, "inbound test call; nothing forwarded", route=route, status=200)
        return
    hot_info(
        log,
        "inbound call",
        route=route,
        status=200,
        accepted=answer["accepted"],
        duplicates=answer["duplicates"],
        skipped=answer["skipped"],
    )


def _unprocessable(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "the JSON nests too deeply"
    return f"a value cannot be serialised: {str(exc)[:200]}"


async def _refuse(
    request: Request,
    writer: Writer,
    settings: Settings,
    source: Source,
    route: str,
    target: str | None,
    body: bytes,
    error: InboundError,
) -> Response:
    await keep_rejected(
        writer,
        source=source,
        route=route,
        target=target,
        request=request,
        body=body,
        error=error,
        max_bytes=settings.rejected_body_bytes,
    )
    observe_inbound(route, error.status)
    log.info("inbound call rejected", route=route, status=error.status, error=error.error)
    return error.response()
