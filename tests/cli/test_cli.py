"""The operator commands through Typer's runner, on the database the running app writes to,
with BRIDGE_* variables as an operator would set them; exit codes are part of the contract."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from click.testing import Result
from typer.testing import CliRunner

from app.cli import cli
from app.clock import utcnow
from app.config import Settings, get_settings
from app.state import BridgeState
from app.system import repository as system_repo
from tests.admin.conftest import (
    age_rows,
    post_campaign,
    row_of,
)
from tests.conftest import CLEVERTAP_URL, CT_AUTH, MAILMODO_KEY, MAILMODO_URL
from tests.factories import (
    set_rows,
)

runner = CliRunner()


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, settings: Settings) -> Iterator[None]:
    """BRIDGE_* pointing at the test database (the one ``client`` serves), no ``.env``."""
    for name in list(os.environ):
        if name.startswith("BRIDGE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    env = {
        "BRIDGE_DATABASE_URL": settings.database_url,
        "BRIDGE_MAILMODO_API_KEY": MAILMODO_KEY,
        "BRIDGE_MAILMODO_API_URL": MAILMODO_URL,
        "BRIDGE_CLEVERTAP_ACCOUNT_ID": "TEST-ACCOUNT",
        "BRIDGE_CLEVERTAP_PASSCODE": "TEST-PASSCODE",
        "BRIDGE_CLEVERTAP_API_URL": CLEVERTAP_URL,
        "BRIDGE_LOG_FORMAT": "console",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def run(*args: str, code: int = 0) -> Result:
    result = runner.invoke(cli, list(args))
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    return result


# --- reading -----------------------------------------------------------------------------------


async def test_stats(client: httpx.AsyncClient, state: BridgeState, cli_env: None) -> None:
    ids = await post_campaign(client, "c", "a@example.com", "b@example.com", "c@example.com")
    set_rows(state.engine, ids[:1], state="dead")
    set_rows(state.engine, ids[1:2], state="delivered")
    with state.engine.begin() as conn:
        system_repo.set_paused(
            conn, "mailmodo", reason="rejected the key", fingerprint=None, now=utcnow(), probe_in=60
        )
    text = run("stats").stdout
    assert "clevertap_to_mailmodo" in text
    [line] = [ln for ln in text.splitlines() if ln.startswith("total")]
    assert line.split() == ["total", "1", "1", "0", "1", "0", "0", "0"]
    assert "mailmodo: PAUSED" in text
    assert "rejected the key" in text
    data = json.loads(run("stats", "--json").stdout)
    assert data["totals"]["dead"] == 1
    assert data["upstreams"]["mailmodo"]["paused"] is True


async def test_inspect(client: httpx.AsyncClient, state: BridgeState, cli_env: None) -> None:
    [d] = await post_campaign(client, "camp-7", "ann@example.com")
    set_rows(state.engine, [d], state="failed", reason="Mailmodo refused: HTTP 400: bad data")
    text = run("inspect", str(d)).stdout
    assert f"delivery {d}: failed" in text
    assert "Mailmodo refused: HTTP 400: bad data" in text
    assert "clevertap.campaign" in text
    assert "attempts (0)" in text
    data = json.loads(run("inspect", str(d), "--json").stdout)
    assert data["delivery"]["target"] == "camp-7"
    assert data["inbound_call"]["status"] == "accepted"

    missing = run("inspect", "4242", code=1)
    assert "there is no delivery 4242" in missing.stderr
    run("inspect", "abc", code=2)
    run("inspect", code=2)


async def test_deliveries_by_email(client: httpx.AsyncClient, cli_env: None) -> None:
    await post_campaign(client, "c1", "Ann@Example.com", "bob@example.com")
    await post_campaign(client, "c2", "ann@example.com")
    text = run("deliveries", "--email", "ANN@example.com").stdout
    assert text.count("ann@example.com") == 2
    assert "bob@example.com" not in text
    data = json.loads(run("deliveries", "--email", "ann@example.com", "--json").stdout)
    assert [i["target"] for i in data["items"]] == ["c2", "c1"]
    page = run("deliveries", "--limit", "1").stdout
    assert "more: --cursor" in page
    cursor = page.rsplit("--cursor ", 1)[1].strip()
    assert "c1" in run("deliveries", "--limit", "5", "--cursor", cursor).stdout
    assert run("deliveries", "--state", "dead").stdout.strip() == "no deliveries match"
    run("deliveries", "--state", "exploded", code=2)
    run("deliveries", "--since", "yesterday", code=2)
    run("deliveries", "--cursor", "garbage", code=2)


async def test_rejected(client: httpx.AsyncClient, cli_env: None) -> None:
    assert run("rejected").stdout.strip() == "no rejected calls"
    await client.post("/clevertap/campaigns/camp-x", content=b"{bad", headers=CT_AUTH)
    text = run("rejected", "--since", "1h").stdout
    assert "camp-x" in text
    assert "malformed JSON" in text
    assert json.loads(run("rejected", "--json", "--source", "mailmodo").stdout)["items"] == []


# --- replay and purge --------------------------------------------------------------------------


async def test_replay_dead_in_the_last_two_hours(
    client: httpx.AsyncClient, state: BridgeState, cli_env: None
) -> None:
    ids = await post_campaign(client, "c", *(f"u{i}@example.com" for i in range(4)))
    set_rows(state.engine, ids[:2], state="dead", attempts=4, finished_at=utcnow())
    set_rows(state.engine, ids[2:3], state="dead", updated_at=utcnow() - timedelta(hours=3))

    dry = run("replay", "--state", "dead", "--since", "2h", "--dry-run")
    assert dry.stdout.strip() == "2 deliveries would be replayed (dry run)"
    assert row_of(state.engine, ids[0]).state == "dead"

    real = run("replay", "--state", "dead", "--since", "2h")
    assert real.stdout.strip() == "replayed 2 deliveries"
    assert "replaying" in real.stderr  # the progress bar stays off stdout
    states = [row_of(state.engine, d).state for d in ids]
    assert states == ["pending", "pending", "dead", "pending"]
    assert row_of(state.engine, ids[0]).attempts == 0
    assert run("replay", "--state", "dead", "--since", "2h").stdout.strip() == "nothing to replay"


async def test_replay_refuses_an_empty_filter(
    client: httpx.AsyncClient, state: BridgeState, cli_env: None
) -> None:
    [d] = await post_campaign(client, "c", "a@example.com")
    set_rows(state.engine, [d], state="dead")
    refused = run("replay", code=2)
    assert "--state" in refused.stderr or "states" in refused.stderr
    run("replay", "--email", "a@example.com", code=2)
    run("replay", "--state", "delivered", code=2)
    run("replay", "--state", "bogus", code=2)
    run("replay", "--since", "soon", code=2)
    assert row_of(state.engine, d).state == "dead"
    assert run("replay", "--since", "1h").stdout.strip() == "replayed 1 deliveries"


async def test_purge(client: httpx.AsyncClient, state: BridgeState, cli_env: None) -> None:
    old = await post_campaign(client, "old", "a@example.com", "b@example.com")
    new = await post_campaign(client, "new", "c@example.com")
    age_rows(state.engine, old, days=40)
    set_rows(state.engine, old, state="delivered", updated_at=utcnow() - timedelta(days=40))
    set_rows(state.engine, new, state="delivered")

    dry = run("purge", "--older-than", "30d", "--dry-run").stdout
    assert dry.startswith("2 deliveries and 1 inbound calls older than")
    real = run("purge", "--older-than", "30d")
    assert real.stdout.strip() == "deleted 2 deliveries and 1 inbound calls"
    assert "purging" in real.stderr
    listed = json.loads(run("deliveries", "--json").stdout)["items"]
    assert [i["id"] for i in listed] == new

    run("purge", code=2)
    run("purge", "--older-than", "a while", code=2)
    run("purge", "--older-than", "1d", "--state", "pending", code=2)


# --- one delivery, upstreams -------------------------------------------------------------------


async def test_retry_cancel_resume(
    client: httpx.AsyncClient, state: BridgeState, cli_env: None
) -> None:
    [a, b] = await post_campaign(client, "c", "a@example.com", "b@example.com")
    assert run("cancel", str(a)).stdout.strip() == f"delivery {a}: pending → cancelled"
    assert "only pending or parked" in run("cancel", str(a), code=1).stderr
    assert run("retry", str(a)).stdout.strip() == f"delivery {a}: cancelled → pending"
    set_rows(state.engine, [b], state="delivered")
    assert "--force" in run("retry", str(b), code=1).stderr
    assert run("retry", str(b), "--force").stdout.strip() == f"delivery {b}: delivered → pending"
    run("retry", "999", code=1)
    assert "were not paused" in run("resume", "mailmodo").stdout
    assert "were not paused" in run("resume", "mailmojo").stdout
    run("resume", "sendgrid", code=2)


def test_missing_database_is_reported(cli_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_DATABASE_URL", "sqlite:///./nowhere/bridge.db")
    get_settings.cache_clear()
    result = run("stats", code=1)
    assert "does not exist" in result.stderr
    assert not Path("nowhere").exists()


def test_bad_configuration_is_exit_2(cli_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_CLEVERTAP_REGION", "mars")
    get_settings.cache_clear()
    for command in ("stats", "check"):
        result = run(command, code=2)
        assert "configuration error" in result.stderr


@pytest.mark.parametrize(
    "command", ["stats", "inspect", "deliveries", "replay", "purge", "check", "retry", "cancel"]
)
def test_help_documents_exit_codes(command: str) -> None:
    result = run(command, "--help")
    assert "Exit codes" in result.stdout


# --- check -------------------------------------------------------------------------------------


@pytest.fixture
def upstreams() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


def fake(
    router: respx.MockRouter, mailmodo: Any, clevertap: Any
) -> tuple[respx.Route, respx.Route]:
    def route(url: str, answer: Any) -> respx.Route:
        r = router.get(url)
        if isinstance(answer, Exception):
            return r.mock(side_effect=answer)
        return r.mock(return_value=answer)

    return (
        route(f"{MAILMODO_URL}/api/v1/getAllContactLists", mailmodo),
        route(f"{CLEVERTAP_URL}/1/profile.json", clevertap),
    )


def test_check_ok(
    engine: object, cli_env: None, upstreams: respx.MockRouter
) -> None:  # ``engine`` migrates the database
    mm, ct = fake(
        upstreams,
        httpx.Response(200, json={"listDetails": []}),
        httpx.Response(200, json={"status": "success", "record": {}}),
    )
    out = run("check").stdout
    assert "ok    database" in out
    assert "ok    mailmodo: Mailmodo accepted the API key" in out
    assert "ok    clevertap: CleverTap accepted" in out
    assert mm.called
    assert ct.called
    assert MAILMODO_KEY not in out
    assert "TEST-PASSCODE" not in out


def test_check_rejected_keys(engine: object, cli_env: None, upstreams: respx.MockRouter) -> None:
    fake(
        upstreams,
        httpx.Response(401, json={"message": "Invalid API key"}),
        httpx.Response(401, json={"status": "fail", "error": "Account Id not found"}),
    )
    out = run("check", code=1).stdout
    assert "fail  mailmodo: Mailmodo rejected the API key" in out
    assert "fail  clevertap: CleverTap rejected the account id/passcode — or the region" in out


def test_check_unreachable(engine: object, cli_env: None, upstreams: respx.MockRouter) -> None:
    fake(upstreams, httpx.ConnectError("refused"), httpx.ConnectTimeout("slow"))
    out = run("check", "--timeout", "2", code=1).stdout
    assert f"cannot reach {MAILMODO_URL}" in out
    assert f"cannot reach {CLEVERTAP_URL}: no answer within 2 s" in out


def test_check_other_client_errors_prove_the_credentials(
    engine: object, cli_env: None, upstreams: respx.MockRouter
) -> None:
    fake(
        upstreams,
        httpx.Response(200, json={"listDetails": []}),
        httpx.Response(400, json={"status": "fail", "error": "Profile not found"}),
    )
    assert "ok    clevertap" in run("check").stdout


def test_check_without_a_mailmodo_key_fails(
    engine: object, cli_env: None, upstreams: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BRIDGE_MAILMODO_API_KEY")
    get_settings.cache_clear()
    fake(upstreams, httpx.Response(200), httpx.Response(200))
    out = run("check", code=1).stdout
    assert "BRIDGE_MAILMODO_API_KEY is not set" in out
