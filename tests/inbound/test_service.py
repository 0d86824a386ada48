"""The pieces of the inbound line: credentials, bounded reads, content types, JSON and
keeping rejected calls (dedup keys: ``test_dedup.py``)."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

import orjson
import pytest
from starlette.requests import Request
from starlette.types import Message

from app.clock import utcnow
from app.inbound.service import (
    BodyTooLarge,
    InboundError,
    _submit_all,
    check_content_type,
    clevertap_credential,
    keep_rejected,
    parse_json,
    read_body,
    secret_matches,
)
from app.outbox.models import CallStatus, Source
from app.outbox.schemas import IngestRecord, IngestResult
from app.outbox.writer import UnstorableRecord, WriterUnavailable


def make_request(
    headers: dict[str, str] | None = None,
    chunks: Iterable[bytes] = (b"",),
    *,
    request_id: str | None = None,
) -> Request:
    pending = list(chunks)

    async def receive() -> Message:
        if not pending:
            return {"type": "http.disconnect"}
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/clevertap/campaigns/c1",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "query_string": b"",
        "state": {"request_id": request_id} if request_id else {},
    }
    return Request(scope, receive)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --- secrets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        ("one", True),
        ("two", True),
        ("three", False),
        ("on", False),
        ("one ", False),
        ("ONE", False),
        ("", False),
        (None, False),
        ("ünïcode", False),
    ],
)
def test_secret_matches_any_configured_secret(candidate: str | None, expected: bool) -> None:
    assert secret_matches(candidate, ("one", "two")) is expected


def test_secret_matches_nothing_when_no_secret_is_configured() -> None:
    assert secret_matches("anything", ()) is False


# --- credentials -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-Bridge-Secret": "s3cret"}, "s3cret"),
        ({"X-Bridge-Secret": "  s3cret  "}, "s3cret"),
        ({"Authorization": basic("anyone", "s3cret")}, "s3cret"),
        ({"Authorization": basic("", "s3cret")}, "s3cret"),
        ({"Authorization": basic("user", "pa:ss:word")}, "pa:ss:word"),
        ({"Authorization": basic("user", "")}, ""),
        ({"Authorization": "basic " + base64.b64encode(b"u:lower").decode()}, "lower"),
        ({"Authorization": "BASIC " + base64.b64encode(b"u:upper").decode()}, "upper"),
        # the header wins over Basic
        ({"X-Bridge-Secret": "hdr", "Authorization": basic("u", "basic")}, "hdr"),
        # an empty header falls back to Basic
        ({"X-Bridge-Secret": "", "Authorization": basic("u", "basic")}, "basic"),
        ({"Authorization": "Basic !!!not-base64!!!"}, None),
        ({"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()}, None),
        ({"Authorization": "Basic " + base64.b64encode(b"u:\xff\xfe").decode()}, None),
        # bytes beyond ASCII where base64 is expected (the header arrives as latin-1)
        ({"Authorization": "Basic \xc3\xa9"}, None),
        ({"Authorization": "Basic \xe9"}, None),
        ({"Authorization": "basic \xe9\xe9\xe9\xe9"}, None),
        ({"Authorization": "Bearer s3cret"}, None),
        ({"Authorization": "s3cret"}, None),
        ({}, None),
    ],
)
def test_clevertap_credential(headers: dict[str, str], expected: str | None) -> None:
    assert clevertap_credential(make_request(headers)) == expected


# --- bounded body reading ----------------------------------------------------------------------


async def test_read_body_joins_chunks_under_the_limit() -> None:
    request = make_request(chunks=[b"ab", b"cd", b"ef"])
    assert await read_body(request, 6) == b"abcdef"


async def test_read_body_refuses_a_declared_length_over_the_limit_keeping_its_start() -> None:
    request = make_request({"Content-Length": "11"}, [b"x" * 11])
    with pytest.raises(BodyTooLarge) as info:
        await read_body(request, 10)
    assert info.value.status == 413
    assert info.value.partial == b"x" * 10  # what is kept of it, no more
    assert info.value.detail == {"limit_bytes": 10, "received_bytes_at_least": 11}


async def test_read_body_refuses_a_streamed_body_once_it_passes_the_limit() -> None:
    request = make_request(chunks=[b"a" * 6, b"b" * 6, b"c" * 6])
    with pytest.raises(BodyTooLarge) as info:
        await read_body(request, 10)
    assert info.value.partial == b"a" * 6 + b"b" * 4  # kept: the limit's worth, no more
    assert info.value.detail == {"limit_bytes": 10, "received_bytes_at_least": 12}  # no 3rd read


async def test_read_body_exactly_at_the_limit_is_fine() -> None:
    request = make_request({"Content-Length": "10"}, [b"0123456789"])
    assert await read_body(request, 10) == b"0123456789"


async def test_read_body_ignores_a_non_numeric_content_length() -> None:
    request = make_request({"Content-Length": "lots"}, [b"abc"])
    assert await read_body(request, 10) == b"abc"


# --- content type ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/vnd.clevertap+json",
        " application/json ;charset=UTF-8",
    ],
)
def test_json_content_types_are_accepted(content_type: str) -> None:
    assert check_content_type(make_request({"Content-Type": content_type})) == content_type


def test_missing_content_type_gets_the_benefit_of_the_doubt() -> None:
    assert check_content_type(make_request()) is None


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""],
)
def test_other_content_types_are_415(content_type: str) -> None:
    with pytest.raises(InboundError) as info:
        check_content_type(make_request({"Content-Type": content_type}))
    assert info.value.status == 415
    assert info.value.detail == {"content_type": content_type, "expected": "application/json"}


# --- JSON ------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"", b"   ", b"\n\t"])
def test_empty_body_is_malformed(body: bytes) -> None:
    with pytest.raises(InboundError) as info:
        parse_json(body)
    assert (info.value.status, info.value.error, info.value.detail) == (
        400,
        "malformed JSON",
        "the body is empty",
    )


@pytest.mark.parametrize("body", [b"{", b"{'a': 1}", b'{"a": 1,}', b"\xff\xfe", b"nul"])
def test_malformed_json_is_400_with_the_parser_message(body: bytes) -> None:
    with pytest.raises(InboundError) as info:
        parse_json(body)
    assert info.value.status == 400
    assert info.value.error == "malformed JSON"
    assert isinstance(info.value.detail, str)
    assert info.value.detail


@pytest.mark.parametrize(
    ("body", "value"), [(b'{"a": [1, null]}', {"a": [1, None]}), (b"[]", []), (b"3", 3)]
)
def test_valid_json_is_parsed(body: bytes, value: Any) -> None:
    assert parse_json(body) == value


# --- answers ---------------------------------------------------------------------------------


def test_error_response_is_json_and_401_asks_for_basic() -> None:
    response = InboundError(401, "unauthorized", "nope").response()
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Basic realm="ctmm-bridge"'
    assert response.headers["content-type"] == "application/json"
    assert orjson.loads(bytes(response.body)) == {"error": "unauthorized", "detail": "nope"}
    other = InboundError(415, "unsupported media type").response()
    assert "www-authenticate" not in other.headers
    assert orjson.loads(bytes(other.body)) == {"error": "unsupported media type", "detail": None}


# --- keeping rejected calls --------------------------------------------------------------------


class RecordingWriter:
    def __init__(self, fail: bool = False) -> None:
        self.records: list[IngestRecord] = []
        self.fail = fail

    async def submit(self, record: IngestRecord) -> IngestResult:
        if self.fail:
            raise WriterUnavailable("down")
        self.records.append(record)
        return IngestResult(call_id=1, duplicate=False, delivery_ids=[])


async def keep(
    writer: RecordingWriter, body: bytes, error: InboundError, max_bytes: int = 16
) -> IngestRecord | None:
    request = make_request({"Content-Type": "text/plain"}, request_id="req-1")
    await keep_rejected(
        writer,  # type: ignore[arg-type]
        source=Source.CLEVERTAP,
        route="clevertap.campaign",
        target="c1",
        request=request,
        body=body,
        error=error,
        max_bytes=max_bytes,
    )
    return writer.records[-1] if writer.records else None


async def test_keep_rejected_stores_reason_status_and_request_data() -> None:
    writer = RecordingWriter()
    record = await keep(writer, b"hello", InboundError(415, "unsupported media type", {"a": 1}))
    assert record is not None
    assert record.status is CallStatus.REJECTED
    assert record.http_status == 415
    assert record.body == "hello"
    assert record.body_truncated is False
    assert record.reason == 'unsupported media type: {"a":1}'
    assert record.content_type == "text/plain"
    assert record.request_id == "req-1"
    assert (record.source, record.route, record.target) == (
        Source.CLEVERTAP,
        "clevertap.campaign",
        "c1",
    )
    assert record.dedup_key is None
    assert record.deliveries == []


async def test_keep_rejected_truncates_long_bodies() -> None:
    writer = RecordingWriter()
    record = await keep(writer, b"x" * 40, InboundError(400, "malformed JSON", "bad"))
    assert record is not None
    assert record.body == "x" * 16
    assert record.body_truncated is True
    assert record.reason == "malformed JSON: bad"


async def test_keep_rejected_marks_a_413_truncated_even_when_short() -> None:
    writer = RecordingWriter()
    record = await keep(writer, b"", BodyTooLarge(10, 11, b""))
    assert record is not None
    assert record.body == ""
    assert record.body_truncated is True
    assert record.http_status == 413


async def test_keep_rejected_bounds_the_reason_and_survives_bad_utf8() -> None:
    writer = RecordingWriter()
    record = await keep(writer, b"\xff\xfeok", InboundError(422, "unknown body shape", "d" * 5000))
    assert record is not None
    assert record.body == "\ufffd\ufffdok"
    assert record.reason is not None
    assert record.reason == "unknown body shape: " + "d" * 2000 + "…"


async def test_keep_rejected_without_detail_and_with_a_failing_writer() -> None:
    writer = RecordingWriter()
    record = await keep(writer, b"{}", InboundError(422, "no valid recipient"))
    assert record is not None
    assert record.reason == "no valid recipient"
    # A database failure while keeping a rejection is logged, not raised.
    failing = RecordingWriter(fail=True)
    assert await keep(failing, b"{}", InboundError(422, "x")) is None


# --- a call stored as several records ------------------------------------------------------------


class _PerRecordWriter:
    """Answers each record by its ``request_id``: an error to raise, or a result."""

    def __init__(self, outcomes: dict[str, Exception | IngestResult]) -> None:
        self.outcomes = outcomes

    async def submit(self, record: IngestRecord) -> IngestResult:
        outcome = self.outcomes[record.request_id or ""]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def _records(*names: str) -> list[IngestRecord]:
    return [
        IngestRecord(
            source=Source.MAILMODO,
            route="mailmodo.events",
            target=None,
            status=CallStatus.ACCEPTED,
            http_status=200,
            received_at=utcnow(),
            body="[]",
            request_id=name,
        )
        for name in names
    ]


async def test_several_records_prefer_the_retryable_failure() -> None:
    """One item unstorable and another not stored for want of the database: 503 (retry),
    not 422, or the second item would never be stored."""
    writer = _PerRecordWriter({"a": UnstorableRecord("too long"), "b": WriterUnavailable("down")})
    with pytest.raises(WriterUnavailable):
        await _submit_all(writer, _records("a", "b"))  # type: ignore[arg-type]


async def test_an_unstorable_item_says_the_others_were_stored() -> None:
    ok = IngestResult(call_id=1, duplicate=False, delivery_ids=[7])
    writer = _PerRecordWriter({"a": ok, "b": UnstorableRecord("too long")})
    with pytest.raises(UnstorableRecord, match="1 other items were stored"):
        await _submit_all(writer, _records("a", "b"))  # type: ignore[arg-type]
    writer = _PerRecordWriter({"a": ok, "b": ok})
    assert await _submit_all(writer, _records("a", "b")) == [ok, ok]  # type: ignore[arg-type]
