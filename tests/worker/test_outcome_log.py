"""The delivery log an operator follows: one line per attempt worded by its outcome, with the
next attempt time; failures at warning, dead and the start of a pause at error (once, not per
probe); an upload that did not go is never logged as "uploaded"."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
import respx
from structlog.testing import capture_logs

from app.clock import ManualClock
from app.state import BridgeState
from app.worker.delivery import MailmodoDeliverer
from tests.factories import add_deliveries, add_delivery, add_events, get_delivery, make_due
from tests.worker.conftest import any_call, mm_ok, mm_status, reset_rate_slots
from tests.worker.conftest_upload import ct_success, uploader_for


def lines(logs: list[dict[str, Any]], level: str | None = None) -> list[dict[str, Any]]:
    """The worker's lines (not the HTTP client's), optionally of one level."""
    return [
        e
        for e in logs
        if "delivery_id" in e or "records" in e or "upstream" in e
        if level is None or e["log_level"] == level
    ]


async def test_each_mailmodo_attempt_has_a_line(
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
    clock: ManualClock,
) -> None:
    """Retry (warning, with the next attempt), then dead (error) after the last, and
    delivered (info) for another row: one line each, worded by the outcome."""
    dying = add_delivery(state.engine, "a@example.com")
    route = any_call(mailmodo).mock(return_value=mm_status(503))
    with capture_logs() as logs:
        for _ in range(len(state.settings.retry_schedule_seconds) + 1):
            await deliverer.run_once(10)
            clock.advance(max(state.settings.retry_schedule_seconds) * 2)
    assert get_delivery(state.engine, dying).state == "dead"
    mine = lines(logs)
    assert [e["log_level"] for e in mine] == ["warning"] * 3 + ["error"]
    for entry in mine[:3]:
        assert entry["event"] == "delivery attempt failed; will retry"
        assert entry["status_code"] == 503
        assert datetime.fromisoformat(entry["next_attempt_at"]).tzinfo is not None
    assert mine[-1]["event"] == "delivery dead: no attempt left"
    assert "next_attempt_at" not in mine[-1]
    assert [e["attempt"] for e in mine] == [1, 2, 3, 4]

    add_delivery(state.engine, "b@example.com")
    route.mock(return_value=mm_ok())
    with capture_logs() as logs:
        await deliverer.run_once(10)
    [delivered] = lines(logs)
    assert (delivered["log_level"], delivered["event"]) == ("info", "delivered")
    assert delivered["upstream"] == "mailmodo"
    assert "email" not in delivered


async def test_a_terminal_refusal_is_a_warning_and_a_rate_limit_info(
    state: BridgeState, deliverer: MailmodoDeliverer, mailmodo: respx.MockRouter
) -> None:
    add_delivery(state.engine, "a@example.com")
    route = any_call(mailmodo).mock(return_value=mm_status(429, headers={"Retry-After": "30"}))
    with capture_logs() as logs:
        await deliverer.run_once(10)
    [deferred] = lines(logs)
    assert (deferred["log_level"], deferred["event"]) == ("info", "rate limited; deferred")
    assert "next_attempt_at" in deferred

    reset_rate_slots(state.engine)
    add_delivery(state.engine, "b@example.com")
    route.mock(return_value=mm_status(400, {"message": "campaign not found"}))
    with capture_logs() as logs:
        await deliverer.run_once(10)
    [failed] = lines(logs)
    assert (failed["log_level"], failed["event"]) == ("warning", "delivery failed for good")
    assert "campaign not found" in failed["reason"]


async def test_a_pause_is_one_error_not_one_per_probe(
    state: BridgeState,
    deliverer: MailmodoDeliverer,
    mailmodo: respx.MockRouter,
    clock: ManualClock,
) -> None:
    add_deliveries(state.engine, "a@example.com", "b@example.com")
    any_call(mailmodo).mock(return_value=mm_status(401, {"message": "Invalid apiKey"}))
    with capture_logs() as logs:
        await deliverer.run_once(1)
        for _ in range(3):  # three probes, each refused again
            clock.advance(state.settings.pause_probe_seconds + 1)
            assert (await deliverer.run_once(10)).claimed == 1
    errors = lines(logs, "error")
    assert [e["event"] for e in errors] == [
        "upstream rejected our credentials; deliveries paused until they work"
    ]
    probes = [e for e in lines(logs, "info") if "paused" in e["event"]]
    assert len(probes) == 4  # the first refusal and each probe: info, with the next probe time
    assert all("next_attempt_at" in e for e in probes)


async def test_a_failed_upload_is_not_logged_as_uploaded(
    state: BridgeState, clevertap_api: respx.MockRouter
) -> None:
    ids = add_events(state.engine, "a@example.com", "b@example.com", clevertap_id="__ct")
    route = clevertap_api.post("/1/upload").mock(return_value=httpx.Response(503, text="busy"))
    async with uploader_for(state.engine, state.settings) as uploader:
        with capture_logs() as logs:
            await uploader.run_once()
        batch = [e for e in lines(logs) if "records" in e]
        assert len(batch) == 1
        assert batch[0]["log_level"] == "warning"
        assert "uploaded" not in batch[0]["event"]
        assert batch[0]["status_code"] == 503
        assert batch[0]["states"] == {"pending": 2}
        assert "next_attempt_at" in batch[0]

        make_due(state.engine, ids)
        route.mock(side_effect=ct_success)
        with capture_logs() as logs:
            await uploader.run_once()
        [ok] = [e for e in lines(logs) if "records" in e]
        assert (ok["log_level"], ok["event"]) == ("info", "uploaded to CleverTap")
        assert ok["states"] == {"delivered": 2}
