"""``ctmm-bridge check``: the database and every upstream's live check, against faked
upstreams (respx)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import respx
from sqlalchemy.engine import Engine

from app.check import check
from app.clevertap.check import check_clevertap
from app.mailmodo.check import check_mailmodo
from app.system.check import check_database
from tests.conftest import CLEVERTAP_URL, MAILMODO_KEY, MAILMODO_URL, make_settings

CT_PROFILE = "/1/profile.json"


@pytest.fixture
def respx_mock() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


def test_check_all_good(respx_mock: respx.MockRouter, tmp_path: Path, engine: Engine) -> None:
    mm = respx_mock.get(f"{MAILMODO_URL}/api/v1/getAllContactLists").respond(
        200, json={"listDetails": []}
    )
    ct = respx_mock.get(f"{CLEVERTAP_URL}{CT_PROFILE}").respond(
        400, json={"status": "fail", "error": "Profile not found"}
    )
    mj = respx_mock.get("https://mailmojo.test/v1/lists/").respond(200, json=[])
    settings = make_settings(
        f"sqlite:///{tmp_path / 'bridge.db'}",
        mailmojo_api_token="mj-token",
        mailmojo_api_url="https://mailmojo.test",
    )
    results = {r.name: r for r in check(settings)}
    assert {n: r.status for n, r in results.items()} == {
        "database": "ok",
        "mailmodo": "ok",
        "clevertap": "ok",
        "mailmojo": "ok",
    }
    assert mj.calls.last.request.headers["Authorization"] == "Bearer mj-token"
    assert mm.calls.last.request.headers["mmApiKey"] == MAILMODO_KEY
    request = ct.calls.last.request
    assert request.url.params["email"] == "ctmm-bridge-check@example.invalid"
    assert request.headers["X-CleverTap-Account-Id"] == "TEST-ACCOUNT"
    assert request.headers["X-CleverTap-Passcode"] == "TEST-PASSCODE"


def test_check_rejected_credentials(respx_mock: respx.MockRouter, tmp_path: Path) -> None:
    respx_mock.get(f"{MAILMODO_URL}/api/v1/getAllContactLists").respond(
        401, json={"message": "Invalid API key"}
    )
    respx_mock.get(f"{CLEVERTAP_URL}{CT_PROFILE}").respond(
        401, json={"status": "fail", "error": "Invalid Credentials"}
    )
    settings = make_settings(f"sqlite:///{tmp_path / 'bridge.db'}")
    mm = check_mailmodo(settings)
    assert mm.status == "fail"
    assert "Mailmodo rejected the API key" in mm.message
    assert "Invalid API key" in mm.message
    assert MAILMODO_KEY not in mm.message
    ct = check_clevertap(settings)
    assert ct.status == "fail"
    assert "CleverTap rejected the account id/passcode" in ct.message
    assert f"BRIDGE_CLEVERTAP_API_URL={CLEVERTAP_URL}" in ct.message
    region = make_settings(
        f"sqlite:///{tmp_path / 'bridge.db'}", clevertap_api_url=None, clevertap_region="eu1"
    )
    respx_mock.get("https://eu1.api.clevertap.com/1/profile.json").respond(401)
    assert "BRIDGE_CLEVERTAP_REGION=eu1" in check_clevertap(region).message


def test_check_unreachable_and_failing(respx_mock: respx.MockRouter, tmp_path: Path) -> None:
    respx_mock.get(f"{MAILMODO_URL}/api/v1/getAllContactLists").mock(
        side_effect=httpx.ConnectError("connection refused")
    )
    respx_mock.get(f"{CLEVERTAP_URL}{CT_PROFILE}").mock(side_effect=httpx.ReadTimeout("slow"))
    settings = make_settings(f"sqlite:///{tmp_path / 'bridge.db'}")
    mm = check_mailmodo(settings)
    assert mm.status == "fail"
    assert mm.message.startswith(f"cannot reach {MAILMODO_URL}")
    ct = check_clevertap(settings, timeout=3)
    assert ct.message == f"cannot reach {CLEVERTAP_URL}: no answer within 3 s"

    respx_mock.get(f"{MAILMODO_URL}/api/v1/getAllContactLists").respond(503)
    respx_mock.get(f"{CLEVERTAP_URL}{CT_PROFILE}").respond(429)
    assert check_mailmodo(settings).status == "fail"
    assert check_clevertap(settings).status == "warn"


def test_check_unconfigured(tmp_path: Path) -> None:
    settings = make_settings(
        f"sqlite:///{tmp_path / 'missing' / 'bridge.db'}",
        mailmodo_api_key=None,
        clevertap_account_id=None,
        clevertap_passcode=None,
    )
    results = {r.name: r for r in check(settings)}
    assert results["database"].status == "warn"
    assert "does not exist yet" in results["database"].message
    assert not (tmp_path / "missing").exists()
    assert results["mailmodo"].status == "fail"
    assert "BRIDGE_MAILMODO_API_KEY is not set" in results["mailmodo"].message
    assert results["clevertap"].status == "warn"
    half = make_settings(f"sqlite:///{tmp_path / 'b.db'}", clevertap_passcode=None)
    ct = check_clevertap(half)
    assert (ct.status, ct.message.split(" ")[0]) == ("fail", "BRIDGE_CLEVERTAP_PASSCODE")


def test_check_database_not_migrated(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()
    result = check_database(make_settings(f"sqlite:///{path}"))
    assert result.status == "warn"
    assert "not " in result.message
