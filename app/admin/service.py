"""What an operator reads, once, for both the ``/admin`` API and the ``ctmm-bridge`` CLI, and
how what they type is parsed. What they change (retry, cancel, replay, purge, resume) is in
``app.admin.actions``.

Functions take an ``Engine`` and open their own transactions; reads go through
``read_only`` (no SQLite write lock). Refusals are ``AdminError``s, which the API answers as
JSON and the CLI turns into an exit code.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx
import orjson
from sqlalchemy.engine import Engine, make_url

from app import __version__
from app.admin import repository as repo
from app.admin.repository import DeliveryFilter
from app.admin.schemas import (
    AttemptItem,
    DeliveryDetail,
    DeliveryFull,
    DeliveryItem,
    DeliveryPage,
    Filters,
    InboundCallItem,
    ParkedStats,
    Rates,
    RejectedItem,
    RejectedPage,
    Stats,
    UpstreamStatus,
    WorkerBeat,
)
from app.clock import utcnow
from app.config import Settings
from app.db import create_db_engine, read_only
from app.errors import BridgeError
from app.outbox.models import Direction, State, Upstream
from app.system.migrations import current_revision, head_revision

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
DETAIL_BODY_CHARS = 16_384
LISTED_BODY_CHARS = 2000


class AdminError(BridgeError):
    """A refusal with an HTTP status; the API answers it as JSON, the CLI maps it to an exit
    code (422, the operator's input: 2; anything else: 1)."""


def invalid(detail: Any) -> AdminError:
    return AdminError(422, "invalid request", detail)


# -- parsing what operators type ----------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``3600s`` (or ``2w``) as a positive ``timedelta``."""
    match = _DURATION.match(text or "")
    if not match:
        raise invalid(f"{text!r} is not a duration; write e.g. 30d, 12h, 90m or 3600s")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
    if seconds <= 0:
        raise invalid(f"{text!r}: the duration must be more than zero")
    return timedelta(seconds=seconds)


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """A moment: a duration ago (``2h``) or an ISO 8601 time (UTC unless it says otherwise)."""
    if _DURATION.match(text):
        return (now or utcnow()) - parse_duration(text)
    try:
        return as_utc(datetime.fromisoformat(text.strip()))
    except ValueError:
        raise invalid(
            f"{text!r} is neither a duration (2h, 30m, 7d) nor an ISO 8601 time "
            "(2026-01-31T12:00:00Z)"
        ) from None


def as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _opt_utc(value: datetime | None) -> datetime | None:
    return None if value is None else as_utc(value)


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | None:
    """The id the next page starts below; the token is opaque to clients."""
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, value = raw.partition(":")
        if prefix != "id" or not value.isdigit():
            raise ValueError(raw)
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid(f"{cursor!r} is not a cursor this API gave out") from None


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise invalid(f"limit must be between 1 and {MAX_LIMIT}")
    return limit


def delivery_filter(spec: Filters, *, default_states: Sequence[State] = ()) -> DeliveryFilter:
    states = spec.states if spec.states is not None else list(default_states)
    return DeliveryFilter(
        direction=spec.direction.value if spec.direction else None,
        upstream=spec.upstream.value if spec.upstream else None,
        states=tuple(dict.fromkeys(State(s).value for s in states)),
        email=spec.email.strip().lower() if spec.email else None,
        target=spec.target or None,
        operation=spec.operation.value if spec.operation else None,
        created_after=_opt_utc(spec.created_after),
        created_before=_opt_utc(spec.created_before),
        updated_after=_opt_utc(spec.updated_after),
        updated_before=_opt_utc(spec.updated_before),
    )


# -- reading ------------------------------------------------------------------------------------


def list_deliveries(
    engine: Engine, spec: Filters, *, limit: int = DEFAULT_LIMIT, cursor: str | None = None
) -> DeliveryPage:
    f = delivery_filter(spec)
    before_id = decode_cursor(cursor)
    limit = _limit(limit)
    with read_only(engine).connect() as conn:
        rows = repo.list_deliveries(conn, f, limit=limit + 1, before_id=before_id)
    items = [DeliveryItem.model_validate(r) for r in rows[:limit]]
    more = len(rows) > limit
    return DeliveryPage(items=items, next_cursor=encode_cursor(items[-1].id) if more else None)


def delivery_detail(engine: Engine, delivery_id: int) -> DeliveryDetail:
    with read_only(engine).connect() as conn:
        row = repo.get_delivery(conn, delivery_id)
        if row is None:
            raise AdminError(404, "not found", f"there is no delivery {delivery_id}")
        call = repo.get_call(conn, row.inbound_call_id) if row.inbound_call_id else None
        attempts = repo.attempts_of(conn, delivery_id)
    fields = dict(row._mapping)
    fields["payload"] = _json_or_text(row.payload)
    call_item = None
    if call is not None:
        call_fields = dict(call._mapping)
        body: str = call_fields["body"]
        if len(body) > DETAIL_BODY_CHARS:
            call_fields |= {"body": body[:DETAIL_BODY_CHARS], "body_truncated": True}
        call_item = InboundCallItem.model_validate(call_fields)
    return DeliveryDetail(
        delivery=DeliveryFull.model_validate(fields),
        inbound_call=call_item,
        attempts=[AttemptItem.model_validate(a) for a in attempts],
        reason=row.reason,
    )


def list_rejected(
    engine: Engine,
    *,
    source: str | None = None,
    received_after: datetime | None = None,
    received_before: datetime | None = None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> RejectedPage:
    before_id = decode_cursor(cursor)
    limit = _limit(limit)
    with read_only(engine).connect() as conn:
        rows = repo.list_rejected(
            conn,
            source=source,
            received_after=_opt_utc(received_after),
            received_before=_opt_utc(received_before),
            limit=limit + 1,
            before_id=before_id,
        )
    items = []
    for row in rows[:limit]:
        fields = dict(row._mapping)
        if len(fields["body"]) > LISTED_BODY_CHARS:
            fields |= {"body": fields["body"][:LISTED_BODY_CHARS], "body_truncated": True}
        items.append(RejectedItem.model_validate(fields))
    more = len(rows) > limit
    return RejectedPage(items=items, next_cursor=encode_cursor(items[-1].id) if more else None)


def stats(engine: Engine) -> Stats:
    now = utcnow()
    with read_only(engine).connect() as conn:
        counted = repo.counts_by_direction_and_state(conn)
        oldest = repo.oldest_pending_created_at(conn)
        last5 = repo.delivered_since(conn, now - timedelta(minutes=5))
        last60 = repo.delivered_since(conn, now - timedelta(minutes=60))
        parked, parked_emails = repo.parked_counts(conn)
        paused = {r.upstream: r for r in repo.paused_upstreams(conn)}
        beats = repo.heartbeats(conn)
    counts: dict[str, dict[str, int]] = {d.value: dict.fromkeys(State, 0) for d in Direction}
    totals: dict[str, int] = dict.fromkeys(State, 0)
    for direction, state, n in counted:
        counts.setdefault(direction, {})[state] = n
        totals[state] = totals.get(state, 0) + n
    upstreams: dict[str, UpstreamStatus] = {}
    for upstream in Upstream:
        row = paused.get(upstream.value)
        upstreams[upstream.value] = (
            UpstreamStatus(
                paused=True, reason=row.reason, since=row.paused_at, next_probe_at=row.probe_at
            )
            if row is not None
            else UpstreamStatus(paused=False)
        )
    return Stats(
        generated_at=now,
        counts={k: {str(s): n for s, n in v.items()} for k, v in counts.items()},
        totals={str(s): n for s, n in totals.items()},
        oldest_pending_age_seconds=(
            round(max(0.0, (now - oldest).total_seconds()), 3) if oldest else None
        ),
        deliveries_per_minute=Rates(
            last_5_minutes=round(last5 / 5, 3), last_60_minutes=round(last60 / 60, 3)
        ),
        parked=ParkedStats(count=parked, distinct_emails=parked_emails),
        upstreams=upstreams,
        workers=[
            WorkerBeat(
                worker_id=b.worker_id,
                hostname=b.hostname,
                pid=b.pid,
                started_at=b.started_at,
                last_beat_at=b.beat_at,
                age_seconds=round(max(0.0, (now - b.beat_at).total_seconds()), 3),
            )
            for b in beats
        ],
    )


# -- ctmm-bridge check --------------------------------------------------------------------------

CheckStatus = Literal["ok", "warn", "fail"]
CHECK_EMAIL = "ctmm-bridge-check@example.invalid"


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    status: CheckStatus
    message: str


def _shown_url(settings: Settings) -> str:
    return make_url(settings.database_url).render_as_string(hide_password=True)


def _sqlite_file_missing(settings: Settings) -> bool:
    """Opening a missing SQLite file would create it; a check or a read must not."""
    if not settings.is_sqlite:
        return False
    path = make_url(settings.database_url).database
    return path not in (None, "", ":memory:") and not Path(str(path)).exists()


def check_database(settings: Settings) -> CheckResult:
    """The database answers and its schema is at the latest migration."""
    shown = _shown_url(settings)
    if _sqlite_file_missing(settings):
        return CheckResult(
            "database",
            "warn",
            f"{shown} does not exist yet; `ctmm-bridge serve` creates and migrates it",
        )
    engine = create_db_engine(settings)
    try:
        current = current_revision(read_only(engine))
    except Exception as exc:
        return CheckResult("database", "fail", f"cannot use {shown}: {_short_error(exc)}")
    finally:
        engine.dispose()
    head = head_revision()
    if current == head:
        return CheckResult("database", "ok", f"{shown} answers, schema at {head}")
    hint = (
        "`ctmm-bridge serve` migrates it at start"
        if settings.is_sqlite
        else "run `ctmm-bridge db upgrade`"
    )
    return CheckResult(
        "database",
        "warn" if settings.is_sqlite else "fail",
        f"{shown} is at migration {current or 'none'}, not {head}; {hint}",
    )


def _short_error(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "…"


def _upstream_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200]
    if isinstance(body, dict):
        for key in ("message", "error", "Message", "detail"):
            if isinstance(body.get(key), str):
                return str(body[key])[:200]
    return response.text.strip()[:200]


def _get(
    url: str, headers: dict[str, str], timeout: float, transport: httpx.BaseTransport | None
) -> httpx.Response:
    headers = {"User-Agent": f"ctmm-bridge/{__version__}", "Accept": "application/json", **headers}
    with httpx.Client(timeout=timeout, transport=transport) as client:
        return client.get(url, headers=headers)


def _unreachable(name: str, base: str, exc: httpx.HTTPError, timeout: float) -> CheckResult:
    why = f"no answer within {timeout:g} s" if isinstance(exc, httpx.TimeoutException) else exc
    return CheckResult(name, "fail", f"cannot reach {base}: {why}")


def check_mailmodo(
    settings: Settings, *, timeout: float = 10.0, transport: httpx.BaseTransport | None = None
) -> CheckResult:
    """``GET /api/v1/getAllContactLists``: cheap, read-only, and needs a valid key."""
    name = "mailmodo"
    base = settings.mailmodo_api_url.rstrip("/")
    if not settings.mailmodo_api_key:
        return CheckResult(
            name, "fail", "BRIDGE_MAILMODO_API_KEY is not set: calls are kept but none is sent"
        )
    try:
        response = _get(
            f"{base}/api/v1/getAllContactLists",
            {"mmApiKey": settings.mailmodo_api_key},
            timeout,
            transport,
        )
    except httpx.HTTPError as exc:
        return _unreachable(name, base, exc, timeout)
    code = response.status_code
    if 200 <= code < 300:
        return CheckResult(name, "ok", f"Mailmodo accepted the API key ({base})")
    if code in (401, 403):
        return CheckResult(
            name,
            "fail",
            f"Mailmodo rejected the API key (HTTP {code}: {_upstream_message(response)}); "
            "check BRIDGE_MAILMODO_API_KEY",
        )
    if code == 429:
        return CheckResult(
            name, "warn", "Mailmodo is throttling (HTTP 429); the key could not be checked now"
        )
    if code >= 500:
        return CheckResult(
            name, "fail", f"Mailmodo is failing (HTTP {code}); try again later ({base})"
        )
    return CheckResult(
        name,
        "fail",
        f"Mailmodo answered HTTP {code} ({_upstream_message(response)}); is "
        f"BRIDGE_MAILMODO_API_URL={base} right?",
    )


def check_clevertap(
    settings: Settings, *, timeout: float = 10.0, transport: httpx.BaseTransport | None = None
) -> CheckResult:
    """Look up a profile that cannot exist: any answer but 401/403 proves the credentials."""
    name = "clevertap"
    account, passcode = settings.clevertap_account_id, settings.clevertap_passcode
    if not account and not passcode:
        return CheckResult(
            name,
            "warn",
            "not configured (BRIDGE_CLEVERTAP_ACCOUNT_ID / BRIDGE_CLEVERTAP_PASSCODE): Mailmodo "
            "activity is kept but not uploaded",
        )
    if not account or not passcode:
        missing = "BRIDGE_CLEVERTAP_PASSCODE" if account else "BRIDGE_CLEVERTAP_ACCOUNT_ID"
        return CheckResult(name, "fail", f"{missing} is not set; CleverTap needs both")
    base = settings.clevertap_base_url
    where = (
        f"BRIDGE_CLEVERTAP_API_URL={settings.clevertap_api_url}"
        if settings.clevertap_api_url
        else f"BRIDGE_CLEVERTAP_REGION={settings.clevertap_region}"
    )
    try:
        response = _get(
            f"{base}/1/profile.json?email={CHECK_EMAIL}",
            {"X-CleverTap-Account-Id": account, "X-CleverTap-Passcode": passcode},
            timeout,
            transport,
        )
    except httpx.HTTPError as exc:
        return _unreachable(name, base, exc, timeout)
    code = response.status_code
    if code in (401, 403):
        return CheckResult(
            name,
            "fail",
            f"CleverTap rejected the account id/passcode — or the region is wrong ({where}); "
            f"HTTP {code}: {_upstream_message(response)}",
        )
    if code == 429:
        return CheckResult(
            name, "warn", "CleverTap is throttling (HTTP 429); the credentials could not be checked"
        )
    if code >= 500:
        return CheckResult(name, "fail", f"CleverTap is failing (HTTP {code}); try again later")
    return CheckResult(name, "ok", f"CleverTap accepted the account id/passcode ({base})")


def check(
    settings: Settings, *, timeout: float = 10.0, transport: httpx.BaseTransport | None = None
) -> list[CheckResult]:
    return [
        check_database(settings),
        check_mailmodo(settings, timeout=timeout, transport=transport),
        check_clevertap(settings, timeout=timeout, transport=transport),
    ]


# -- stored text --------------------------------------------------------------------------------


def _json_or_text(value: str) -> Any:
    """A stored payload as JSON when it parses, else as the text it is."""
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value
