"""The typed Mailmodo client: paths, headers, body, quoting, answers, transport failures."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import orjson
import pytest
import respx

from app import __version__
from app.mailmodo.client import PATHS, MailmodoClient
from app.outbox.models import Operation
from app.upstream import (
    MAX_KEPT_BODY,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnreachable,
    parse_retry_after,
)
from tests.conftest import MAILMODO_KEY, MAILMODO_URL

PAYLOAD = orjson.dumps(
    {"email": "a@example.com", "data": {"first_name": "Ann", "clevertap_id": "__g1"}}
).decode()


@pytest.fixture
async def mm() -> AsyncIterator[MailmodoClient]:
    client = MailmodoClient(base_url=MAILMODO_URL + "/", api_key=MAILMODO_KEY, timeout=7.0)
    yield client
    await client.aclose()


def ok() -> httpx.Response:
    return httpx.Response(200, json={"success": True, "message": "ok", "ref": "r-1"})


@pytest.mark.parametrize(
    ("operation", "path"),
    [
        (Operation.CAMPAIGN_TRIGGER, "/api/v1/triggerCampaign/abc-123"),
        (Operation.JOURNEY_START, "/hooks/start/abc-123"),
        (Operation.JOURNEY_ABORT, "/hooks/abort/abc-123"),
    ],
)
async def test_call_posts_payload_to_the_operation_path(
    mm: MailmodoClient, mailmodo: respx.MockRouter, operation: Operation, path: str
) -> None:
    route = mailmodo.post(path).mock(return_value=ok())

    answer = await mm.call(operation, "abc-123", PAYLOAD)

    assert route.call_count == 1
    request = route.calls.last.request
    assert str(request.url) == f"{MAILMODO_URL}{path}"  # trailing slash of the base is dropped
    assert request.method == "POST"
    assert request.content == PAYLOAD.encode()  # sent as stored, not re-serialised
    assert request.headers["mmApiKey"] == MAILMODO_KEY
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Accept"] == "application/json"
    assert request.headers["User-Agent"] == f"ctmm-bridge/{__version__}"
    assert "authorization" not in request.headers
    assert answer.status_code == 200
    assert answer.json == {"success": True, "message": "ok", "ref": "r-1"}


def test_only_the_mailmodo_delivery_operations_have_paths() -> None:
    assert set(PATHS) == {
        Operation.CAMPAIGN_TRIGGER,
        Operation.JOURNEY_START,
        Operation.JOURNEY_ABORT,
        Operation.LIST_SYNC,
        Operation.CONTACT_UNSUBSCRIBE,
        Operation.CONTACT_RESUBSCRIBE,
    }


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("trigger_campaign", "/api/v1/triggerCampaign/x"),
        ("start_journey", "/hooks/start/x"),
        ("abort_journey", "/hooks/abort/x"),
    ],
)
async def test_named_helpers(
    mm: MailmodoClient, mailmodo: respx.MockRouter, method: str, path: str
) -> None:
    route = mailmodo.post(path).mock(return_value=ok())
    call: Callable[[str, str], Awaitable[UpstreamResponse]] = getattr(mm, method)
    await call("x", PAYLOAD)
    assert route.call_count == 1


@pytest.mark.parametrize(
    ("target", "raw_path"),
    [
        ("a/b", b"/api/v1/triggerCampaign/a%2Fb"),
        ("a b?c#d&e=f", b"/api/v1/triggerCampaign/a%20b%3Fc%23d%26e%3Df"),
        ("jöurney", b"/api/v1/triggerCampaign/j%C3%B6urney"),
        ("50%", b"/api/v1/triggerCampaign/50%25"),
    ],
)
async def test_target_is_quoted_as_one_path_segment(
    mm: MailmodoClient, mailmodo: respx.MockRouter, target: str, raw_path: bytes
) -> None:
    route = mailmodo.route().mock(return_value=ok())
    await mm.trigger_campaign(target, PAYLOAD)
    assert route.calls.last.request.url.raw_path == raw_path


async def test_client_never_retries(mm: MailmodoClient, mailmodo: respx.MockRouter) -> None:
    route = mailmodo.route().mock(return_value=httpx.Response(503, text="down"))
    answer = await mm.trigger_campaign("c", PAYLOAD)
    assert answer.status_code == 503
    assert answer.text == "down"
    assert answer.json is None
    assert route.call_count == 1


# --- the answer record ----------------------------------------------------------------------


async def test_answer_record(mm: MailmodoClient, mailmodo: respx.MockRouter) -> None:
    mailmodo.route().mock(
        return_value=httpx.Response(
            429, json={"message": "Too many requests"}, headers={"Retry-After": "12"}
        )
    )
    answer = await mm.trigger_campaign("c", PAYLOAD)
    assert answer.status_code == 429
    assert answer.json == {"message": "Too many requests"}
    assert answer.text == '{"message":"Too many requests"}'
    assert answer.retry_after == 12.0
    assert answer.duration_ms >= 0
    assert answer.kept_body == answer.text


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"", None), (b"<html>oops</html>", None), (b'{"a": 1', None), (b"[1]", [1])],
)
async def test_non_json_answers_are_kept_as_text(
    mm: MailmodoClient, mailmodo: respx.MockRouter, content: bytes, expected: object
) -> None:
    mailmodo.route().mock(return_value=httpx.Response(502, content=content))
    answer = await mm.trigger_campaign("c", PAYLOAD)
    assert answer.json == expected
    assert answer.text == content.decode()


async def test_kept_body_is_at_most_2kb(mm: MailmodoClient, mailmodo: respx.MockRouter) -> None:
    body = "ü" * 10_000
    mailmodo.route().mock(return_value=httpx.Response(500, text=body))
    answer = await mm.trigger_campaign("c", PAYLOAD)
    assert answer.text == body
    assert len(answer.kept_body.encode()) == MAX_KEPT_BODY
    assert body.startswith(answer.kept_body)


# --- Retry-After ----------------------------------------------------------------------------


def http_date(seconds_from_now: float) -> str:
    return format_datetime(datetime.now(UTC) + timedelta(seconds=seconds_from_now), usegmt=True)


def test_retry_after_forms() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after(" 30 ") == 30.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00") is None  # no zone: ignored
    assert parse_retry_after(http_date(-3600)) == 0.0  # in the past: go now
    later = parse_retry_after(http_date(120))
    assert later is not None
    assert 118.0 <= later <= 120.0


# --- transport failures ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        httpx.ReadTimeout("read"),
        httpx.ConnectTimeout("connect"),
        httpx.WriteTimeout("write"),
        httpx.PoolTimeout("pool"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_timeouts_raise_upstream_timeout(
    mm: MailmodoClient, mailmodo: respx.MockRouter, error: Exception
) -> None:
    mailmodo.route().mock(side_effect=error)
    with pytest.raises(UpstreamTimeout, match=type(error).__name__) as raised:
        await mm.trigger_campaign("c", PAYLOAD)
    assert raised.value.duration_ms >= 0


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadError("connection reset"),
        httpx.RemoteProtocolError("server disconnected"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_network_errors_raise_upstream_unreachable(
    mm: MailmodoClient, mailmodo: respx.MockRouter, error: Exception
) -> None:
    mailmodo.route().mock(side_effect=error)
    with pytest.raises(UpstreamUnreachable, match=type(error).__name__) as raised:
        await mm.trigger_campaign("c", PAYLOAD)
    assert not isinstance(raised.value, UpstreamTimeout)
    assert raised.value.duration_ms >= 0


async def test_explicit_timeouts_and_pool() -> None:
    client = MailmodoClient(
        base_url=MAILMODO_URL, api_key=MAILMODO_KEY, timeout=15.0, max_connections=7
    )
    try:
        timeout = client._client.timeout
        assert (timeout.connect, timeout.read, timeout.write, timeout.pool) == (
            5.0,
            15.0,
            15.0,
            15.0,
        )
    finally:
        await client.aclose()
    short = MailmodoClient(base_url=MAILMODO_URL, api_key=MAILMODO_KEY, timeout=2.0)
    try:
        assert short._client.timeout.connect == 2.0
    finally:
        await short.aclose()


async def test_one_pooled_client_serves_every_call() -> None:
    """A custom transport sees every request, on the same client, and aclose closes it."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return ok()

    client = MailmodoClient(
        base_url=MAILMODO_URL, api_key=MAILMODO_KEY, transport=httpx.MockTransport(handler)
    )
    await client.trigger_campaign("a", PAYLOAD)
    await client.start_journey("b", PAYLOAD)
    await client.abort_journey("c", PAYLOAD)
    await client.aclose()
    assert seen == ["/api/v1/triggerCampaign/a", "/hooks/start/b", "/hooks/abort/c"]
    assert client._client.is_closed
