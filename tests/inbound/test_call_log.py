"""One log line per inbound call, as ``serve`` writes it (JSON): route, status, items,
duplicates and the request id; test calls and wrong secrets said as such; never a secret or
an unmasked email."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from app.logging import configure_logging
from app.main import create_app
from tests.conftest import ADMIN_TOKEN, CT_SECRET, MAILMODO_KEY, MM_SECRET, make_settings
from tests.conftest import profiles_body as profiles


def call_lines(err: str) -> list[dict[str, Any]]:
    entries = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [e for e in entries if str(e.get("event", "")).startswith("inbound")]


async def test_one_line_per_call(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'b.db'}", log_format="json")
    configure_logging(settings)
    app = create_app(settings)
    email = "ann.lee@example.com"
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            capsys.readouterr()
            auth = {"X-Bridge-Secret": CT_SECRET}
            for rid in ("r-first", "r-again"):  # the second is a duplicate
                r = await client.post(
                    "/clevertap/campaigns/c1",
                    json=profiles(email, "b@example.com"),
                    headers={**auth, "X-Request-ID": rid},
                )
                assert r.status_code == 200
            r = await client.post(
                "/clevertap/campaigns/c1",
                json={"is_test": True},
                headers={**auth, "X-Request-ID": "r-test"},
            )
            assert r.status_code == 200
            r = await client.post(
                "/clevertap/campaigns/c1",
                json=profiles(email),
                headers={"X-Bridge-Secret": "not-the-secret-9z", "X-Request-ID": "r-401"},
            )
            assert r.status_code == 401
            r = await client.post(
                f"/mailmodo/{MM_SECRET}/events",
                json={"email": email, "x": 1},
                headers={"X-Request-ID": "r-422"},
            )
            assert r.status_code == 422
            r = await client.post(
                f"/mailmodo/{MM_SECRET}/events",
                json={"event": "opened", "email": email, "clevertap_id": "__c"},
                headers={"X-Request-ID": "r-mm"},
            )
            assert r.status_code == 200
    err = capsys.readouterr().err
    by_id = {e["request_id"]: e for e in call_lines(err)}
    assert list(by_id) == ["r-first", "r-again", "r-test", "r-401", "r-422", "r-mm"]
    first, again = by_id["r-first"], by_id["r-again"]
    assert (first["level"], first["route"], first["status"]) == ("info", "clevertap.campaign", 200)
    assert (first["accepted"], first["duplicates"], first["skipped"]) == (2, 0, 0)
    assert (again["accepted"], again["duplicates"]) == (0, 2)
    assert by_id["r-test"]["event"] == "inbound test call; nothing forwarded"
    assert by_id["r-401"]["level"] == "warning"
    assert by_id["r-401"]["event"] == "inbound call refused: missing or wrong secret"
    assert (by_id["r-422"]["status"], by_id["r-422"]["route"]) == (422, "mailmodo.events")
    assert (by_id["r-mm"]["accepted"], by_id["r-mm"]["route"]) == (1, "mailmodo.events")
    for secret in (CT_SECRET, MM_SECRET, MAILMODO_KEY, ADMIN_TOKEN, "not-the-secret-9z", email):
        assert secret not in err
