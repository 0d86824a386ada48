"""The console in a real browser: Debian's Chromium driven by Playwright for Python against a
real ``ctmm-bridge serve`` on loopback, delivering to a fake Mailmodo that first refuses.

One walk through what an operator does: the page shows nothing without the token, a wrong
token gets a clear message; signed in, they find ann@example.com's failed delivery by email
with the keyboard, read its attempts, see the ``<script>`` in her first name as text (it never
runs), retry it from the detail page and see it delivered; the person's page tells the same
story. Screenshots at laptop and phone width are saved (``BRIDGE_CONSOLE_SCREENSHOTS=dir``
keeps them), and at phone width no screen is wider than the phone.

Chromium comes from apt (``.ci/run`` installs it). Without it this test is skipped locally,
and fails under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import CT_SECRET

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKEN = "console-browser-token"
XSS = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def _chromium() -> str:
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    if os.environ.get("CI") == "true":
        pytest.fail(f"{CHROMIUM} is missing under CI=true: .ci/run installs it (apt chromium)")
    pytest.skip(f"browser test skipped: no {CHROMIUM} (apt-get install chromium)")


class FakeMailmodo:
    """Refuses triggers (HTTP 400, a terminal failure) until ``refuse`` is cleared."""

    def __init__(self) -> None:
        self.refuse = True
        self.received: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.received.append(body)
                status, answer = (
                    (400, {"success": False, "message": "Invalid campaign data"})
                    if fake.refuse
                    else (200, {"success": True, "message": "ok", "ref": "ref-1"})
                )
                raw = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def bridge(tmp_path: Path) -> Iterator[tuple[str, FakeMailmodo]]:
    _chromium()
    fake = FakeMailmodo()
    port = _free_port()
    env = {
        **os.environ,
        "BRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'bridge.db'}",
        "BRIDGE_PORT": str(port),
        "BRIDGE_ADMIN_TOKEN": TOKEN,
        "BRIDGE_CLEVERTAP_WEBHOOK_SECRETS": CT_SECRET,
        "BRIDGE_MAILMODO_API_KEY": "key",
        "BRIDGE_MAILMODO_API_URL": fake.url,
        "BRIDGE_MAILMODO_TIMEOUT_SECONDS": "2",
        "BRIDGE_WORKER_POLL_SECONDS": "0.1",
        "BRIDGE_HEARTBEAT_SECONDS": "0.5",
        "BRIDGE_SHUTDOWN_GRACE_SECONDS": "2",
        "BRIDGE_LOG_FORMAT": "json",
    }
    log = tmp_path / "bridge.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"], env=env, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("bridge did not start:\n" + log.read_text())
            time.sleep(0.1)
        yield url, fake
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        fake.close()


def _wait(predicate: Any, what: str, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _failed_delivery(url: str, email: str, object_id: str) -> int:
    """A campaign for ``email`` (its first name a script), refused by Mailmodo: its id once it
    is failed."""
    body = {
        "targetId": 1,
        "profiles": {"email": email, "objectId": object_id, "profileData": {"First Name": XSS}},
    }
    resp = httpx.post(f"{url}/clevertap/campaigns/spring-sale", json=body, auth=("ct", CT_SECRET))
    assert resp.status_code == 200, resp.text
    [delivery_id] = resp.json()["ids"]

    def failed() -> bool:
        got = httpx.get(
            f"{url}/admin/deliveries/{delivery_id}",
            headers={"Authorization": f"Bearer {TOKEN}"},
        ).json()
        return bool(got["delivery"]["state"] == "failed")

    _wait(failed, "the refused delivery to fail")
    return int(delivery_id)


def _shots_dir(tmp_path: Path) -> Path:
    keep = os.environ.get("BRIDGE_CONSOLE_SCREENSHOTS")
    out = Path(keep) if keep else tmp_path / "shots"
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_an_operator_finds_reads_and_retries_a_failed_delivery(
    bridge: tuple[str, FakeMailmodo], tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, fake = bridge
    delivery_id = _failed_delivery(url, "ann@example.com", "__ann")
    bob = _failed_delivery(url, "bob@example.com", "__bob")
    shots = _shots_dir(tmp_path)
    errors: list[str] = []

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=LAPTOP)
            page.set_default_timeout(10_000)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("dialog", lambda dialog: errors.append("dialog: " + dialog.message))

            # Nothing without the token; a wrong one is refused in words.
            page.goto(f"{url}/console")
            expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
            expect(page.locator("#nav")).to_be_hidden()
            assert page.locator("#view").inner_text() == ""
            page.get_by_label("Admin token").fill("not-the-token")
            page.keyboard.press("Enter")
            expect(page.locator("#signin-error")).to_contain_text("refused (HTTP 401)")
            expect(page.locator("#nav")).to_be_hidden()

            page.get_by_label("Admin token").fill(TOKEN)
            page.keyboard.press("Enter")
            expect(page.get_by_role("heading", name="Overview", exact=True)).to_be_visible()
            expect(page.locator(".lane").first).to_contain_text("failed")
            page.screenshot(path=str(shots / "overview-laptop.png"), full_page=True)

            # Keyboard only: from the nav to Deliveries, search by email, open the item.
            page.get_by_role("link", name="Overview").focus()
            page.keyboard.press("Tab")
            page.keyboard.press("Tab")
            assert page.evaluate("document.activeElement.textContent") == "Deliveries"
            page.keyboard.press("Enter")
            expect(page.get_by_role("heading", name="Deliveries")).to_be_focused()
            page.keyboard.press("Tab")
            expect(page.get_by_label("Recipient email")).to_be_focused()
            page.keyboard.type("Ann@Example.com")
            page.keyboard.press("Enter")
            row_link = page.get_by_role("link", name=f"#{delivery_id}")
            expect(row_link).to_be_visible()
            expect(page.locator("tbody tr")).to_have_count(1)
            expect(page.locator("tbody tr")).to_contain_text("failed")
            row_link.focus()
            page.keyboard.press("Enter")

            # The detail: attempts, the request, the call as received; the script is text.
            heading = page.get_by_role("heading", name=f"Delivery #{delivery_id}: failed")
            expect(heading).to_be_focused()
            attempts = page.locator("section", has=page.get_by_role("heading", name="Attempts"))
            expect(attempts).to_contain_text("HTTP 400")
            expect(attempts).to_contain_text("failed")
            request = page.locator(
                "section", has=page.get_by_role("heading", name="Request sent upstream")
            )
            expect(request).to_contain_text("POST /api/v1/triggerCampaign/spring-sale")
            expect(request.locator("pre")).to_contain_text(XSS.replace('"', '\\"'))
            call = page.locator(
                "section", has=page.get_by_role("heading", name="Inbound call as received")
            )
            expect(call.locator("pre")).to_contain_text("<script>window.__pwned = 1</script>")
            assert page.evaluate("window.__pwned") is None
            assert page.locator("#view img, #view script").count() == 0
            page.screenshot(path=str(shots / "detail-laptop.png"), full_page=True)

            # Retry by keyboard: the first control after the heading.
            fake.refuse = False
            page.keyboard.press("Tab")
            expect(page.get_by_role("button", name="Retry now")).to_be_focused()
            page.keyboard.press("Enter")
            expect(page.locator("#status")).to_contain_text("failed → pending")

            def delivered() -> bool:
                page.reload()  # the token stays in the tab
                return (
                    page.get_by_role("heading", name=f"Delivery #{delivery_id}: delivered").count()
                    == 1
                )

            _wait(delivered, "the retried delivery to be delivered in the page")
            assert fake.received[-1]["email"] == "ann@example.com"
            expect(
                page.get_by_role("button", name="Send again (already delivered)")
            ).to_be_visible()

            # "Replay everything that failed or died in the last two hours": count, confirm.
            page.goto(f"{url}/console#/replay?since=2h")
            expect(page.get_by_label("Got there (changed) in")).to_have_value("2h")
            expect(page.locator("#replay-outcome")).to_contain_text("1 delivery matches.")
            confirm = page.get_by_role("button", name="Replay 1 delivery")
            expect(confirm).to_be_focused()
            page.keyboard.press("Enter")
            expect(page.locator("#replay-outcome")).to_contain_text("Replayed 1 of 1")
            _wait(
                lambda: (
                    httpx.get(
                        f"{url}/admin/deliveries/{bob}",
                        headers={"Authorization": f"Bearer {TOKEN}"},
                    ).json()["delivery"]["state"]
                    == "delivered"
                ),
                "the replayed delivery to be delivered",
            )

            # The person's page answers "what happened to ann@example.com?".
            page.goto(f"{url}/console#/person?email=ann@example.com")
            expect(page.get_by_role("heading", name="ann@example.com")).to_be_visible()
            expect(page.get_by_role("link", name="1 delivered")).to_be_visible()
            expect(page.locator("#view")).to_contain_text("__ann")
            # ... and what the bridge knows and told of their email consent.
            expect(page.get_by_role("heading", name="Email consent")).to_be_visible()
            expect(page.locator("#view")).to_contain_text("Status reads")

            # Phone width: every screen fits, nothing scrolls sideways.
            page.set_viewport_size(PHONE)
            for name, route in [
                ("overview", "#/overview"),
                ("failures", "#/failures"),
                ("deliveries", "#/deliveries?email=ann%40example.com"),
                ("detail", f"#/delivery/{delivery_id}"),
                ("replay", "#/replay"),
                ("rejected", "#/rejected"),
                ("person", "#/person?email=ann%40example.com"),
            ]:
                page.goto(f"{url}/console{route}")
                page.locator("#view h1").wait_for()
                page.wait_for_load_state("networkidle")
                overflow = page.evaluate(
                    "document.documentElement.scrollWidth - document.documentElement.clientWidth"
                )
                assert overflow <= 0, f"{name} is {overflow}px wider than a phone"
                page.screenshot(path=str(shots / f"{name}-phone.png"), full_page=True)

            # Signing out forgets the token.
            page.get_by_role("button", name="Sign out").click()
            expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
            assert page.evaluate("sessionStorage.length") == 0
        finally:
            browser.close()
    assert errors == []


def test_skip_line_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Chromium: one clear skip locally, a failure under CI."""
    real = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda path: path != CHROMIUM and real(path))
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="no /usr/bin/chromium"):
        _chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        _chromium()
