"""Logs never carry a credential or, unless BRIDGE_LOG_PII=true, an unmasked email."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import sys
import threading
import types
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import respx
import structlog
from asgi_lifespan import LifespanManager

from app import logging as app_logging
from app.logging import Throttle, configure_logging, log_throttled, mask_email, mask_path
from app.main import create_app
from app.worker.build import build_mailmodo_deliverer
from tests.conftest import CT_SECRET, MAILMODO_KEY, MM_SECRET, make_settings, profiles_body


def test_mask_helpers() -> None:
    assert mask_email("to ann.lee@example.com now") == "to a***@example.com now"
    assert mask_path("/mailmodo/s3cr3t/events/opened") == "/mailmodo/***/events/opened"


@pytest.mark.parametrize("log_pii", [False, True])
async def test_no_secret_or_unmasked_email_reaches_the_logs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], log_pii: bool
) -> None:
    settings = make_settings(
        f"sqlite:///{tmp_path / 'b.db'}", log_format="json", log_pii=log_pii, log_level="DEBUG"
    )
    configure_logging(settings)
    app = create_app(settings)
    email = "secret.person@example.com"
    with respx.mock(base_url=settings.mailmodo_api_url) as mm:
        # Mailmodo echoes the email and we log its message; the key must not leak either.
        mm.post("/api/v1/triggerCampaign/c1").mock(
            return_value=httpx.Response(
                400, json={"message": f"bad {email} with key {MAILMODO_KEY}"}
            )
        )
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                r = await client.post(
                    "/clevertap/campaigns/c1",
                    json=profiles_body(email),
                    auth=("clevertap", CT_SECRET),
                    headers={"X-Request-ID": "req-123"},
                )
                assert r.status_code == 200
                assert r.headers["x-request-id"] == "req-123"
                # A rejected call with the path secret and an email in the body.
                r = await client.post(
                    f"/mailmodo/{MM_SECRET}/events", json={"email": email, "x": 1}
                )
                assert r.status_code == 422
                deliverer = build_mailmodo_deliverer(app.state.bridge.engine, settings, "log-test")
                assert deliverer is not None
                await deliverer.run_once(5)
                structlog.get_logger("test").warning(
                    "explicit",
                    email=email,
                    url=f"http://x/mailmodo/{MM_SECRET}/events",
                    api_key=MAILMODO_KEY,
                )
                logging.getLogger("stdlib").warning("stdlib line %s", CT_SECRET)
    err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert lines, err
    for secret in (CT_SECRET, MM_SECRET, MAILMODO_KEY, "admin-test-token"):
        assert secret not in err
    assert (email in err) is log_pii
    if not log_pii:
        assert "s***@example.com" in err
    rejected = [line for line in lines if line.get("event") == "inbound call rejected"]
    assert rejected
    assert rejected[0]["request_id"]
    delivery_lines = [line for line in lines if "delivery_id" in line]
    assert delivery_lines


# --- repeated errors: once per interval, with a count --------------------------------------------


def test_the_throttle_lets_one_through_per_interval_and_counts_the_rest() -> None:
    now = [100.0]
    throttle = Throttle(interval_seconds=30, clock=lambda: now[0])
    assert throttle.allow("disk full") == 0
    assert [throttle.allow("disk full") for _ in range(5)] == [None] * 5
    assert throttle.allow("other error") == 0  # another key is another line
    now[0] += 29.9
    assert throttle.allow("disk full") is None
    now[0] += 0.2
    assert throttle.allow("disk full") == 6  # the line says how many were left out
    assert throttle.allow("disk full") is None


def test_log_throttled_writes_the_count(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr(app_logging, "THROTTLE", Throttle(10, clock=lambda: now[0]))
    lines: list[tuple[str, dict[str, object]]] = []

    class Recorder:
        def error(self, event: str, **fields: object) -> None:
            lines.append((event, fields))

    for _ in range(1000):
        log_throttled(Recorder(), "error", "ingest batch not stored", key="OperationalError")
    now[0] = 11
    log_throttled(Recorder(), "error", "ingest batch not stored", key="OperationalError", size=3)
    assert lines == [
        ("ingest batch not stored", {}),
        ("ingest batch not stored", {"size": 3, "repeated": 999, "interval_seconds": 10}),
    ]


def _both_lines(
    capsys: pytest.CaptureFixture[str], event: str, **fields: object
) -> tuple[str, str]:
    """The line ``log.info`` writes and the line ``hot_info`` writes, for the same call."""
    log = structlog.get_logger("t")
    capsys.readouterr()
    log.info(event, **fields)
    slow = capsys.readouterr().err
    app_logging.hot_info(log, event, **fields)
    fast = capsys.readouterr().err
    return slow, fast


def test_hot_info_writes_the_line_structlog_writes(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(make_settings("sqlite://", log_format="json"))
    tokens = structlog.contextvars.bind_contextvars(request_id="ann.lee@example.com")
    try:
        slow, fast = _both_lines(
            capsys, "inbound call", route="clevertap.campaign", status=200, token=CT_SECRET
        )
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
    slow_line, fast_line = json.loads(slow), json.loads(fast)
    # Key for key, in the same order; only the time differs.
    assert list(slow_line) == list(fast_line)
    slow_line.pop("timestamp"), fast_line.pop("timestamp")
    assert slow_line == fast_line
    assert fast_line["request_id"] == "a***@example.com"  # redacted like every line
    assert fast_line["token"] == "***"
    assert CT_SECRET not in fast
    assert fast.endswith("}\n")
    assert fast.count("\n") == 1


def test_hot_info_follows_the_level_and_other_configurations(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(make_settings("sqlite://", log_format="json", log_level="WARNING"))
    assert _both_lines(capsys, "inbound call", status=200) == ("", "")
    # The console format and capture_logs are served by structlog's own chain.
    configure_logging(make_settings("sqlite://", log_format="console"))
    _slow, fast = _both_lines(capsys, "inbound call", status=200)
    assert "inbound call" in fast
    assert not fast.startswith("{")
    configure_logging(make_settings("sqlite://", log_format="json"))
    with structlog.testing.capture_logs() as captured:
        app_logging.hot_info(structlog.get_logger("t"), "delivered", delivery_id=7)
    assert captured == [{"event": "delivered", "delivery_id": 7, "log_level": "info"}]


def test_a_line_is_written_whatever_its_values(capsys: pytest.CaptureFixture[str]) -> None:
    """orjson refuses integers past 64 bits; the line is still written (by json.dumps)."""
    configure_logging(make_settings("sqlite://", log_format="json"))
    structlog.get_logger("t").info("odd values", big=2**70, when=object, keys={1: "one"})
    line = json.loads(capsys.readouterr().err)
    assert line["big"] == 2**70
    assert line["keys"] == {"1": "one"}
    assert line["when"] == repr(object)


class CountingStream(io.StringIO):
    """A stream that counts its writes (each is a system call on stderr)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch) -> CountingStream:
    """JSON logging whose hot lines go to a ``CountingStream``."""
    configure_logging(make_settings("sqlite://", log_format="json"))
    counting = CountingStream()
    assert app_logging._hot is not None
    monkeypatch.setattr(app_logging, "_hot", dataclasses.replace(app_logging._hot, stream=counting))
    return counting


async def test_hot_lines_of_one_loop_turn_go_out_in_one_write(stream: CountingStream) -> None:
    log = structlog.get_logger("t")
    for i in range(3):
        app_logging.hot_info(log, "inbound call", n=i)
    assert stream.getvalue() == ""  # not yet: the turn is not over
    await asyncio.sleep(0)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["n"] for line in lines] == [0, 1, 2]
    assert stream.writes == 1
    # Outside a loop (a worker's thread), a line goes out at once.
    await asyncio.to_thread(app_logging.hot_info, log, "delivered", n=3)
    assert json.loads(stream.getvalue().splitlines()[-1])["n"] == 3


def test_hot_lines_left_by_a_loop_that_closed_are_written_next(stream: CountingStream) -> None:
    log = structlog.get_logger("t")
    loop = asyncio.new_event_loop()

    async def log_then_stop() -> None:
        app_logging.hot_info(log, "inbound call", n=1)

    loop.run_until_complete(log_then_stop())
    loop.close()  # before its turn's end ran the write, perhaps
    asyncio.run(log_then_stop())
    app_logging._flush_at_exit()
    assert [json.loads(line)["n"] for line in stream.getvalue().splitlines()] == [1, 1]


def test_lines_keep_their_order_while_other_threads_log(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A loop's held lines, its ordinary lines and another thread's lines: every line whole,
    on a line of its own, and the loop's in the order it wrote them."""

    class Sink(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.lock = threading.Lock()

        def write(self, s: str) -> int:
            with self.lock:
                return super().write(s)

    sink = Sink()
    monkeypatch.setattr(sys, "stderr", sink)
    configure_logging(make_settings("sqlite://", log_format="json"))
    log = structlog.get_logger("t")
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    stop = threading.Event()

    def other_thread() -> None:
        while not stop.is_set():
            app_logging.hot_info(log, "thread")
            log.info("thread plain")

    async def loop_side() -> None:
        for i in range(5000):
            app_logging.hot_info(log, "loop", n=2 * i)
            log.info("loop", n=2 * i + 1)
            if i % 3 == 0:
                await asyncio.sleep(0)

    thread = threading.Thread(target=other_thread)
    thread.start()
    try:
        asyncio.run(loop_side())
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(old)
        app_logging._flush_at_exit()
    lines = [json.loads(line) for line in sink.getvalue().splitlines()]  # each line whole
    seq = [line["n"] for line in lines if line["event"] == "loop"]
    assert seq == list(range(10000))


@pytest.mark.parametrize(
    "micros",
    [1_764_597_600_000_000, 1_764_597_600_000_001, 1_764_597_600_123_456, 1_764_597_659_999_999],
)
def test_iso_utc_now_writes_structlogs_iso_time(
    monkeypatch: pytest.MonkeyPatch, micros: int
) -> None:
    """The hot lines' time is the text structlog's TimeStamper(fmt="iso", utc=True) writes
    for the same instant, a whole second (no fraction) included, whatever second came before."""
    monkeypatch.setattr(app_logging, "_stamp_second", (micros // 1_000_000 - 1, "stale"))
    monkeypatch.setattr(
        app_logging, "time", types.SimpleNamespace(time_ns=lambda: micros * 1000 + 999)
    )
    expected = (
        datetime.fromtimestamp(micros // 1_000_000, UTC)
        .replace(microsecond=micros % 1_000_000)
        .isoformat()
        .replace("+00:00", "Z")
    )
    assert app_logging.iso_utc_now() == expected
    assert app_logging.iso_utc_now() == expected  # the second's text, now cached
