"""The sandbox end to end: real servers on loopback, driven by the very commands it prints.

Each test starts the bridge and both fakes in-process on free ports with a compressed retry
schedule, so a newcomer's round trip and the retry demos are checked in about a second each.
"""

from __future__ import annotations

import asyncio
import shlex
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from typer.testing import CliRunner

from app.clevertap.outcomes import classify_upload
from app.cli import cli
from app.config import Settings
from app.sandbox.fake_mailmojo import SEEDED_CONTACT, create_fake_mailmojo
from app.sandbox.fakes import create_fake_clevertap, create_fake_mailmodo
from app.sandbox.service import (
    CLEVERTAP_ID,
    DEMO_SETTINGS,
    EMAIL,
    MAILMODO_SECRET,
    Sandbox,
    bind,
    render_instructions,
)
from app.upstream import AttemptOutcome, UpstreamResponse

T = TypeVar("T")

FAST = {
    "retry_schedule_seconds": [0.2, 0.2, 0.2],
    "worker_poll_seconds": 0.05,
    "heartbeat_seconds": 0.2,
    "mailmodo_rate_per_second": 1000.0,
    "clevertap_linger_ms": 0.0,
    "pause_probe_seconds": 0.3,
    "shutdown_grace_seconds": 1.0,
}
WAIT_SECONDS = 10.0


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    # The operator's own settings name a real database and real accounts: none may be used.
    base = Settings(
        _env_file=None,
        database_url=f"sqlite:///{tmp_path / 'real.db'}",
        mailmodo_api_key="real-mailmodo-key",
        clevertap_account_id="REAL-ACCOUNT",
        clevertap_passcode="real-passcode",
        embedded_worker=False,
    )
    sb = Sandbox(
        base,
        bridge_port=0,
        mailmodo_port=0,
        clevertap_port=0,
        mailmojo_port=0,
        db_path=tmp_path / "sandbox.db",
        overrides=FAST,
    )
    async with sb:
        yield sb
    assert not (tmp_path / "real.db").exists()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


def printed_commands(text: str) -> list[list[str]]:
    """Every ``curl`` command in the walk-through, as the shell would split it."""
    joined = text.replace("\\\n", " ")
    return [
        shlex.split(line)
        for line in joined.splitlines()
        if line.strip().startswith("curl ")
        for line in [line[line.index("curl ") :]]
    ]


def find(commands: list[list[str]], fragment: str) -> list[str]:
    matches = [c for c in commands if any(fragment in word for word in c)]
    assert matches, f"no printed command contains {fragment!r}"
    return matches[0]


async def curl(client: httpx.AsyncClient, args: list[str]) -> httpx.Response:
    """What ``curl`` does with the few options the walk-through uses."""
    assert args[0] == "curl"
    method, url, body = "GET", "", None
    headers: dict[str, str] = {}
    auth: tuple[str, str] | None = None
    words = iter(args[1:])
    for word in words:
        if word == "-u":
            user, _, password = next(words).partition(":")
            auth = (user, password)
        elif word == "-H":
            name, _, value = next(words).partition(":")
            headers[name.strip()] = value.strip()
        elif word == "-X":
            method = next(words)
        elif word == "-d":
            body = next(words)
            method = "POST" if method == "GET" else method
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        else:
            assert not word.startswith("-"), f"unexpected curl option {word}"
            url = word
    return await client.request(method, url, content=body, headers=headers, auth=auth)


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str) -> T:
    """Poll ``probe`` until it returns something, for at most ``WAIT_SECONDS``."""
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while True:
        found = await probe()
        if found is not None:
            return found
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def seen(client: httpx.AsyncClient, fake_url: str) -> list[dict[str, Any]]:
    response = await client.get(f"{fake_url}/_sandbox/requests")
    assert response.status_code == 200
    requests: list[dict[str, Any]] = response.json()["requests"]
    return requests


def uploaded(requests: list[dict[str, Any]], event: str, object_id: str) -> list[dict[str, Any]]:
    """The upload calls that carried ``event`` for ``object_id``."""
    return [
        r
        for r in requests
        if r["path"] == "/1/upload"
        and any(
            rec.get("evtName") == event and rec.get("objectId") == object_id
            for rec in r["body"]["d"]
        )
    ]


async def set_mode(client: httpx.AsyncClient, fake_url: str, **mode: Any) -> None:
    response = await client.post(f"{fake_url}/_sandbox/mode", json=mode)
    assert response.status_code == 200, response.text


# --------------------------------------------------------------------------- round trip


async def test_the_printed_round_trip_works(sandbox: Sandbox, http: httpx.AsyncClient) -> None:
    settings = sandbox.settings
    assert settings is not None
    assert settings.database_url == f"sqlite:///{sandbox.db_path}"
    assert settings.mailmodo_api_url == sandbox.mailmodo_url
    assert settings.clevertap_base_url == sandbox.clevertap_url
    assert settings.mailmodo_api_key != "real-mailmodo-key"
    assert settings.embedded_worker

    text = sandbox.instructions()
    for url in (sandbox.bridge_url, sandbox.mailmodo_url, sandbox.clevertap_url):
        assert url in text
    commands = printed_commands(text)

    # 1. CleverTap calls the bridge.
    answer = await curl(http, find(commands, "/clevertap/campaigns/"))
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 1

    # 2. The bridge triggers the fake Mailmodo, passing the CleverTap ID along.
    show_mailmodo = find(commands, f"{sandbox.mailmodo_url}/_sandbox/requests")

    async def triggered() -> dict[str, Any] | None:
        listing = (await curl(http, show_mailmodo)).json()["requests"]
        return next(
            (
                r
                for r in listing
                if r["path"].startswith("/api/v1/triggerCampaign/")
                and r["body"]["data"]["clevertap_id"] == CLEVERTAP_ID
            ),
            None,
        )

    trigger = await eventually(triggered, "the Mailmodo trigger")
    assert trigger["status"] == 200
    assert trigger["body"]["email"] == EMAIL
    assert trigger["answer"]["success"] is True

    # 3. Mailmodo calls back: the email was opened.
    answer = await curl(http, find(commands, f"/mailmodo/{MAILMODO_SECRET}/events"))
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 1

    # 4. The bridge uploads the event to the fake CleverTap, keyed by the ID from step 1.
    show_clevertap = find(commands, f"{sandbox.clevertap_url}/_sandbox/requests")

    async def opened() -> list[dict[str, Any]] | None:
        listing = (await curl(http, show_clevertap)).json()["requests"]
        return uploaded(listing, "MM Email Opened", CLEVERTAP_ID) or None

    uploads = await eventually(opened, "the MM Email Opened upload")
    assert len(uploads) == 1
    assert uploads[0]["status"] == 200
    assert uploads[0]["answer"] == {"status": "success", "processed": 1, "unprocessed": []}


async def test_the_printed_mailmojo_sync_works(sandbox: Sandbox, http: httpx.AsyncClient) -> None:
    """Steps 5 and 6: contact-sync.md §5 against the fake Mailmojo, then a replay that writes
    nothing."""
    assert sandbox.settings is not None
    assert sandbox.settings.mailmojo_api_url == sandbox.mailmojo_url
    commands = printed_commands(sandbox.instructions())
    sync = find(commands, "/clevertap/mailmojo/lists/")
    show = find(commands, f"{sandbox.mailmojo_url}/_sandbox/requests")
    contacts = find(commands, f"{sandbox.mailmojo_url}/_sandbox/contacts")

    async def calls(method: str, count: int) -> list[dict[str, Any]] | None:
        listing = (await curl(http, show)).json()["requests"]
        found = [r for r in listing if r["method"] == method]
        return found if len(found) >= count else None

    assert (await curl(http, sync)).status_code == 200
    [patch] = await eventually(lambda: calls("PATCH", 1), "the PATCH")
    assert patch["path"] == "/v1/contacts/ann@example.com/"
    assert patch["body"] == {
        "email": EMAIL,
        "last_name": "Lee",
        "phone": "+4790000001",
        "tags": ["newsletter-2024", "ct_vip", "ct_paying"],
    }
    [ann] = (await curl(http, contacts)).json()["contacts"]
    assert (ann["first_name"], ann["last_name"]) == ("Ann", "Lee")

    # Repeated: read again, nothing written.
    assert (await curl(http, sync)).status_code == 200
    await eventually(lambda: calls("GET", 2), "the second read")
    await asyncio.sleep(0.3)
    assert len(await calls("PATCH", 1) or []) == 1
    assert await calls("POST", 1) is None


async def test_printed_mode_commands_are_accepted(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    """The retry demos as printed: plain ``curl -d`` (form-encoded) must work."""
    commands = [
        c for c in printed_commands(sandbox.instructions()) if any("/_sandbox/mode" in w for w in c)
    ]
    assert [c[-1] for c in commands] == [
        '{"mode": "fail", "status": 503, "count": 3}',
        '{"mode": "throttle", "count": 5, "retry_after": 2}',
        '{"mode": "unauthorized"}',
        '{"mode": "ok"}',
    ]
    for command in commands:
        answer = await curl(http, command)
        assert answer.status_code == 200, answer.text
    assert (await http.get(f"{sandbox.mailmodo_url}/_sandbox/mode")).json()["mode"] == {
        "mode": "ok"
    }


# --------------------------------------------------------------------------- failure modes


async def test_failing_mailmodo_is_retried_and_delivered_once(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    await set_mode(http, sandbox.mailmodo_url, mode="fail", status=503, count=2)
    commands = printed_commands(sandbox.instructions())
    answer = await curl(http, find(commands, "/clevertap/campaigns/"))
    assert answer.status_code == 200

    async def delivered() -> list[dict[str, Any]] | None:
        listing = await seen(http, sandbox.mailmodo_url)
        return listing if any(r["status"] == 200 for r in listing) else None

    await eventually(delivered, "the trigger to get through")
    await asyncio.sleep(0.6)  # past three retry delays: nothing more may arrive
    triggers = [
        r
        for r in await seen(http, sandbox.mailmodo_url)
        if r["path"] == "/api/v1/triggerCampaign/welcome"
    ]
    assert [r["status"] for r in triggers] == [503, 503, 200]
    assert [r.get("simulated") for r in triggers] == ["fail", "fail", None]
    assert sum(r["answer"].get("success") is True for r in triggers) == 1
    mode = (await http.get(f"{sandbox.mailmodo_url}/_sandbox/mode")).json()["mode"]
    assert mode == {"mode": "ok"}


async def test_throttled_clevertap_defers_then_uploads_once(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    await set_mode(http, sandbox.clevertap_url, mode="throttle", count=2, retry_after=0.2)
    callback = {"event": "clicked", "email": "bob@example.com", "clevertap_id": "__bob"}
    answer = await http.post(
        f"{sandbox.bridge_url}/mailmodo/{MAILMODO_SECRET}/events", json=callback
    )
    assert answer.status_code == 200, answer.text

    async def through() -> list[dict[str, Any]] | None:
        calls = uploaded(await seen(http, sandbox.clevertap_url), "MM Email Link Clicked", "__bob")
        return calls if any(c["status"] == 200 for c in calls) else None

    calls = await eventually(through, "the upload to get through")
    assert [c["status"] for c in calls] == [429, 429, 200]
    assert calls[0]["answer"] == "Too many concurrent requests"


async def test_rejected_mailmodo_key_pauses_until_the_fake_recovers(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    await set_mode(http, sandbox.mailmodo_url, mode="unauthorized")
    commands = printed_commands(sandbox.instructions())
    assert (await curl(http, find(commands, "/clevertap/campaigns/"))).status_code == 200

    async def rejected() -> bool | None:
        return any(r["status"] == 401 for r in await seen(http, sandbox.mailmodo_url)) or None

    await eventually(rejected, "the 401")

    async def paused() -> dict[str, Any] | None:
        ready = await http.get(f"{sandbox.bridge_url}/readyz")
        return ready.json() if ready.status_code == 503 else None

    assert "paused" in str(await eventually(paused, "readiness to report the pause"))
    await set_mode(http, sandbox.mailmodo_url, mode="ok")

    async def delivered() -> bool | None:
        return any(r["status"] == 200 for r in await seen(http, sandbox.mailmodo_url)) or None

    await eventually(delivered, "the probe to deliver")


# --------------------------------------------------------------------------- the fakes alone


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fake")


async def test_fake_mailmodo_answers_like_mailmodo() -> None:
    async with _client(create_fake_mailmodo("key")) as mm:
        good = {"mmApiKey": "key"}
        r = await mm.post("/api/v1/triggerCampaign/c1", json={"email": "a@b.co"})
        assert r.status_code == 401
        r = await mm.post("/api/v1/triggerCampaign/c1", json={"email": "a@b.co"}, headers=good)
        assert r.status_code == 200
        assert r.json()["success"] is True
        assert len(r.json()["ref"]) == 36
        r = await mm.post("/api/v1/triggerCampaign/c1", json={"email": "nope"}, headers=good)
        assert (r.status_code, r.json()["success"]) == (200, False)
        r = await mm.post("/api/v1/triggerCampaign/c1", content=b"{", headers=good)
        assert r.status_code == 400
        r = await mm.post("/hooks/start/j1", json={"email": "c@d.co"}, headers=good)
        assert r.json()["message"] == "journey Executed"
        r = await mm.post("/hooks/abort/j1", json={"email": "bad"}, headers=good)
        assert (r.status_code, r.json()["status"]) == (400, "error")
        r = await mm.post("/hooks/abort/j1", json={"email": "c@d.co"}, headers=good)
        assert r.json()["success"] is True
        r = await mm.get("/api/v1/getAllContactLists", headers=good)
        assert r.json()["listDetails"][0]["contacts_count"] == 2

        r = await mm.post("/_sandbox/mode", json={"mode": "explode"})
        assert r.status_code == 422
        await mm.post("/_sandbox/mode", json={"mode": "throttle", "count": 1, "retry_after": 3})
        r = await mm.post("/hooks/start/j1", json={"email": "c@d.co"}, headers=good)
        assert (r.status_code, r.headers["retry-after"]) == (429, "3")
        r = await mm.post("/hooks/start/j1", json={"email": "c@d.co"}, headers=good)
        assert r.status_code == 200
        listing = (await mm.get("/_sandbox/requests", params={"last": 2})).json()
        assert [e["status"] for e in listing["requests"]] == [429, 200]
        assert listing["seen"] == 10
        assert (await mm.delete("/_sandbox/requests")).status_code == 200
        assert (await mm.get("/_sandbox/requests")).json()["requests"] == []


async def test_fake_clevertap_answers_like_clevertap() -> None:
    async with _client(create_fake_clevertap("ACC", "pass")) as ct:
        good = {"X-CleverTap-Account-Id": "ACC", "X-CleverTap-Passcode": "pass"}
        records = [
            {"type": "event", "objectId": "__a", "evtName": "MM Email Opened", "evtData": {}},
            {"type": "event", "objectId": "__a", "evtData": {}},
            {"type": "event", "evtName": "x", "evtData": {}},
        ]
        r = await ct.post("/1/upload", json={"d": records})
        assert (r.status_code, r.json()["error"]) == (401, "Account ID is not valid")
        r = await ct.post("/1/upload", json={"d": records}, headers=good)
        body = r.json()
        assert (r.status_code, body["status"], body["processed"]) == (200, "partial", 1)
        assert [u["code"] for u in body["unprocessed"]] == [509, 523]
        assert "Skipped record number : 2" in body["unprocessed"][0]["error"]

        # The bridge reads the fake's answer as it reads CleverTap's.
        response = UpstreamResponse(200, r.text, body, 1.0, None)
        kinds = [o.kind for o in classify_upload(response, records)]
        assert kinds == [AttemptOutcome.DELIVERED, AttemptOutcome.FAILED, AttemptOutcome.FAILED]

        r = await ct.post("/1/upload", json={"x": 1}, headers=good)
        assert r.status_code == 400
        r = await ct.get("/1/profile.json", params={"objectId": "__a"}, headers=good)
        assert r.json()["record"]["events"]["MM Email Opened"]["count"] == 1
        r = await ct.get("/1/profile.json", params={"objectId": "__zz"}, headers=good)
        assert r.json()["status"] == "fail"
        r = await ct.get("/1/profile.json", headers=good)
        assert r.status_code == 400

        await ct.post("/_sandbox/mode", content=b'{"mode": "fail", "status": 500, "count": 1}')
        r = await ct.post("/1/upload", json={"d": records[:1]}, headers=good)
        assert (r.status_code, r.json()["code"]) == (500, 500)
        r = await ct.post("/1/upload", json={"d": records[:1]}, headers=good)
        assert r.json()["status"] == "success"


async def test_fake_mailmojo_answers_like_mailmojo() -> None:
    async with _client(create_fake_mailmojo("tok")) as mj:
        good = {"Authorization": "Bearer tok"}
        assert (await mj.get("/v1/lists/")).status_code == 401
        assert (await mj.get("/v1/lists/", headers=good)).json()[0]["id"] == 1
        r = await mj.get("/v1/contacts/ann%40example.com/", headers=good)
        assert r.json()["tags"] == SEEDED_CONTACT["tags"]
        assert (await mj.get("/v1/contacts/x%40y.io/", headers=good)).status_code == 404
        r = await mj.post("/v1/lists/1/subscribers/", json={"email": "x@y.io"}, headers=good)
        assert r.status_code == 201
        assert r.json()["list_associations"][0]["list_id"] == 1
        r = await mj.post("/v1/lists/1/subscribers/", json={"email": "nope"}, headers=good)
        assert r.status_code == 400
        assert (await mj.post("/v1/lists/9/subscribers/", json={}, headers=good)).status_code == 404
        r = await mj.patch("/v1/contacts/x%40y.io/", json={"tags": ["a"]}, headers=good)
        assert r.status_code == 200
        contacts = (await mj.get("/_sandbox/contacts")).json()["contacts"]
        assert [c["email"] for c in contacts] == ["ann@example.com", "x@y.io"]
        assert contacts[1]["tags"] == ["a"]
        await mj.post("/_sandbox/mode", json={"mode": "unauthorized", "count": 1})
        r = await mj.get("/v1/contacts/x%40y.io/", headers=good)
        assert (r.status_code, r.json()) == (401, {"detail": "Invalid token."})


async def test_the_request_log_keeps_each_answer_as_it_was_given() -> None:
    """A read logged before a PATCH shows the contact as read, not as the PATCH left it."""
    async with _client(create_fake_mailmojo("tok")) as mj:
        good = {"Authorization": "Bearer tok"}
        await mj.post("/v1/lists/1/subscribers/", json={"email": "x@y.io"}, headers=good)
        read = (await mj.get("/v1/contacts/x%40y.io/", headers=good)).json()
        await mj.patch("/v1/contacts/x%40y.io/", json={"last_name": "Lee"}, headers=good)
        logged = (await mj.get("/_sandbox/requests")).json()["requests"]
        get = next(e for e in logged if e["method"] == "GET")
        assert get["answer"] == read
        assert get["answer"].get("last_name") != "Lee"


# --------------------------------------------------------------------------- plumbing


def test_a_busy_port_falls_back_to_a_free_one() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        sock = bind(busy)
        try:
            assert sock.getsockname()[1] not in (busy, 0)
        finally:
            sock.close()


def test_sandbox_is_a_command() -> None:
    result = CliRunner().invoke(cli, ["sandbox", "--help"])
    assert result.exit_code == 0
    assert "--mailmodo-port" in result.output


def test_readme_shows_the_commands_the_sandbox_prints() -> None:
    """The README's walk-through is the printed one for the default ports, word for word."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## Try it in the sandbox", 1)[1].split("\n## ", 1)[0]
    urls = {
        "bridge": "http://127.0.0.1:8080",
        "mailmodo": "http://127.0.0.1:8081",
        "clevertap": "http://127.0.0.1:8082",
        "mailmojo": "http://127.0.0.1:8083",
    }
    demo = Settings.model_validate({**Settings(_env_file=None).model_dump(), **DEMO_SETTINGS})
    printed = printed_commands(render_instructions(urls, demo, None))
    shown = printed_commands(section)
    assert len(shown) == 11
    for command in shown:
        assert command in printed
