"""Regenerate the README's console screenshots (needs the dev extras and /usr/bin/chromium).

    .venv/bin/python docs/console/screenshots.py

Seeds a throw-away SQLite database with an hour of varied deliveries (``tests.factories``),
starts ``ctmm-bridge serve`` on loopback with no worker, and shoots each screen at laptop
width (1280x800, the visible part) and two at phone width (390x844) into this folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from app.clock import utcnow  # noqa: E402
from app.config import Settings  # noqa: E402
from app.db import create_db_engine  # noqa: E402
from app.outbox.models import CallStatus, State  # noqa: E402
from app.system.migrations import upgrade  # noqa: E402
from tests.factories import (  # noqa: E402
    add_attempt,
    add_call,
    add_deliveries,
    add_events,
    add_identity,
    add_parked,
    set_rows,
)

TOKEN = "screenshot-token"  # noqa: S105 - a throw-away bridge on loopback
PORT = 18411
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


def seed(url: str) -> int:
    settings = Settings(_env_file=None, database_url=url)  # type: ignore[call-arg]
    engine = create_db_engine(settings)
    upgrade(settings, engine)
    now = utcnow()
    for m in range(60):
        n = (m * 7) % 13 + 1
        emails = [f"user{m}-{i}@example.com" for i in range(n)]
        ids = add_deliveries(engine, *emails, state=State.DELIVERED, target="welcome")
        set_rows(engine, ids, updated_at=now - timedelta(minutes=m, seconds=5))
        if m % 5 == 0:
            few = emails[: n // 2 + 1]
            ids = add_events(engine, *few, state=State.DELIVERED, clevertap_id="__c")
            set_rows(engine, ids, updated_at=now - timedelta(minutes=m, seconds=9))
    [ann] = add_deliveries(
        engine, "ann@example.com", state=State.DEAD, target="spring-sale", attempts=8,
        data={"first_name": "<script>alert(1)</script>"}, last_status_code=503,
        reason="Mailmodo unavailable: HTTP 503 after 8 attempts",
    )  # fmt: skip
    for i in range(1, 4):
        add_attempt(engine, ann, i, status_code=503, error="Mailmodo unavailable: HTTP 503")
    add_identity(engine, "ann@example.com", "__ann")
    add_events(engine, "ann@example.com", state=State.DELIVERED, clevertap_id="__ann")
    bad = add_deliveries(
        engine, *[f"bad{i}@example" for i in range(7)], state=State.FAILED, last_status_code=400,
        reason='Mailmodo refused: HTTP 400: {"message": "Invalid email"}',
    )  # fmt: skip
    set_rows(engine, bad, updated_at=now - timedelta(minutes=12))
    add_deliveries(engine, *[f"p{i}@example.com" for i in range(12)], state=State.PENDING)
    add_parked(engine, "nobody@example.com")
    add_deliveries(engine, "t@example.com", state=State.DEAD, reason="timeout after 15 s")
    add_call(
        engine, status=CallStatus.REJECTED, http_status=422,
        reason="no profile with an email in the call", body='{"profiles": [{"Email": "ann@"}]}',
    )  # fmt: skip
    engine.dispose()
    return ann


def main() -> None:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/shots.db"
        ann = seed(url)
        env = {**os.environ, "BRIDGE_DATABASE_URL": url, "BRIDGE_PORT": str(PORT),
               "BRIDGE_ADMIN_TOKEN": TOKEN, "BRIDGE_EMBEDDED_WORKER": "false",
               "BRIDGE_MAILMODO_API_KEY": "k"}  # fmt: skip
        server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        base = f"http://127.0.0.1:{PORT}/console"
        try:
            for _ in range(300):
                try:
                    httpx.get(base, timeout=0.5)
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.goto(base)
                page.screenshot(path=HERE / "signin.png")
                page.fill("#token", TOKEN)
                page.keyboard.press("Enter")
                page.wait_for_selector("#view h1")
                shots = [
                    ("overview", "#/overview"),
                    ("failures", "#/failures"),
                    ("deliveries", "#/deliveries"),
                    ("detail", f"#/delivery/{ann}"),
                    ("replay", "#/replay?since=2h&state=dead"),
                    ("rejected", "#/rejected"),
                    ("person", "#/person?email=ann%40example.com"),
                ]
                for name, route in shots:
                    page.goto(base + route)
                    page.wait_for_load_state("networkidle")
                    page.mouse.move(0, 0)
                    page.screenshot(path=HERE / f"{name}.png")
                page.set_viewport_size({"width": 390, "height": 844})
                for name, route in [("overview", "#/overview"), ("detail", f"#/delivery/{ann}")]:
                    page.goto(base + route)
                    page.wait_for_load_state("networkidle")
                    page.screenshot(path=HERE / f"{name}-phone.png")
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=15)


if __name__ == "__main__":
    main()
