"""Run the bridge and the fakes (Mailmodo, CleverTap, Mailmojo) in one process, on loopback,
with a throw-away database.

All of them are ``uvicorn.Server`` instances in one asyncio loop. Their sockets are bound here
first (the preferred port, else any free one), so the bridge's settings can name the fakes'
real addresses before anything starts. Settings are the operator's, with everything that could
reach a real account or the real database replaced, and delays shortened for a demo.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI

from app.config import LogFormat, Settings, UnresolvedIdentity
from app.logging import configure_logging
from app.main import create_app
from app.sandbox.fake_mailmojo import SANDBOX_LIST_ID, create_fake_mailmojo
from app.sandbox.fakes import create_fake_clevertap, create_fake_mailmodo
from app.security import new_secret
from app.server import build_server

HOST = "127.0.0.1"
#: Fixed, so the printed ``curl`` lines are the same every time.
#: They open only this loopback demo (the fakes' credentials are generated per run).
CLEVERTAP_SECRET = "sandbox-clevertap-secret"  # noqa: S105
MAILMODO_SECRET = "sandbox-mailmodo-secret"  # noqa: S105
ADMIN_TOKEN = "sandbox-admin-token"  # noqa: S105
#: Seconds the three servers (migrations included) may take to start.
START_TIMEOUT = 30.0

#: Fast enough to watch: a failed call is retried after 2, 5 and 10 seconds, then dead.
DEMO_SETTINGS: dict[str, Any] = {
    "retry_schedule_seconds": [2.0, 5.0, 10.0],
    "mailmodo_rate_per_second": 5.0,
    "clevertap_linger_ms": 50.0,
    "pause_probe_seconds": 5.0,
    "shutdown_grace_seconds": 2.0,
    # Every pasted command does something, even a repeated one.
    "dedup_window_seconds": 0,
    "unresolved_identity": UnresolvedIdentity.PARK,
    "log_format": LogFormat.CONSOLE,
    "sqlite_synchronous": "NORMAL",
    # Status reads 30 s and 2 min after a send, so the consent loop can be watched.
    "reconcile_schedule_hours": [30 / 3600, 120 / 3600],
}

# The round trip a newcomer pastes; the tests send exactly these.
CAMPAIGN_ID = "welcome"
EMAIL = "ann@example.com"
CLEVERTAP_ID = "__sandbox_ann"
CLEVERTAP_CALL = {
    "targetId": 1,
    "key_values": {"coupon": "MT50"},
    "profiles": [{"Email": EMAIL, "ObjectId": CLEVERTAP_ID, "ProfileData": {"First Name": "Ann"}}],
}
MAILMODO_CALLBACK = {"event": "opened", "email": EMAIL, "campaign_name": "Welcome"}
#: contact-sync.md §5's profile and wanted tags, synced into the fake Mailmojo's list.
MAILMOJO_CALL = {
    "key_values": {"tags": "vip, paying"},
    "profiles": [
        {
            "Email": EMAIL,
            "Identity": "u-42",
            "ObjectId": CLEVERTAP_ID,
            "ProfileData": {
                "First Name": "Anna",
                "Last Name": "Lee",
                "Mobile": "+4790000001",
                "Phone": "+4722000002",
            },
        }
    ],
}


class SandboxError(RuntimeError):
    """A server of the sandbox did not start."""


class _Server(uvicorn.Server):
    """Three servers share one loop: the sandbox handles signals once, for all of them."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _run(server: uvicorn.Server, sock: socket.socket) -> None:
    """uvicorn exits the process when an app fails to start; here that is just an error."""
    try:
        await server.serve(sockets=[sock])
    except SystemExit:
        raise SandboxError(
            f"the server on {sock.getsockname()} failed to start (see the log)"
        ) from None


def bind(port: int | None, host: str = HOST) -> socket.socket:
    """A listening-ready socket on ``port`` if it is free, else on any free port."""
    for candidate in (port, 0) if port else (0,):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if os.name != "nt":  # on Windows this would let two servers share a port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, candidate))
        except OSError:
            sock.close()
            continue
        return sock
    raise SandboxError(f"no free port on {host}")


@dataclass(frozen=True, slots=True)
class FakeCredentials:
    """Generated per run: the fakes accept only these, so the bridge must send them."""

    mailmodo_api_key: str
    clevertap_account_id: str
    clevertap_passcode: str
    mailmojo_api_token: str

    @classmethod
    def generate(cls) -> FakeCredentials:
        return cls(
            mailmodo_api_key=f"sandbox-{new_secret()}",
            clevertap_account_id=f"SANDBOX-{os.urandom(4).hex().upper()}",
            clevertap_passcode=f"sandbox-{new_secret()}",
            mailmojo_api_token=f"sandbox-{new_secret()}",
        )


class Sandbox:
    """The bridge plus fake Mailmodo, CleverTap and Mailmojo; ``async with Sandbox(...)`` runs
    them."""

    def __init__(
        self,
        base: Settings,
        *,
        bridge_port: int | None = None,
        mailmodo_port: int | None = 8081,
        clevertap_port: int | None = 8082,
        mailmojo_port: int | None = 8083,
        db_path: Path | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.base = base
        self.ports = {
            "bridge": base.port if bridge_port is None else bridge_port,
            "mailmodo": mailmodo_port,
            "clevertap": clevertap_port,
            "mailmojo": mailmojo_port,
        }
        self.db_path = db_path
        self.overrides = dict(overrides or {})
        self.credentials = FakeCredentials.generate()
        self._tmpdir: Path | None = None
        self._servers: list[tuple[uvicorn.Server, asyncio.Task[None], socket.socket]] = []
        self.settings: Settings | None = None
        self.urls: dict[str, str] = {}

    @property
    def bridge_url(self) -> str:
        return self.urls["bridge"]

    @property
    def mailmodo_url(self) -> str:
        return self.urls["mailmodo"]

    @property
    def clevertap_url(self) -> str:
        return self.urls["clevertap"]

    @property
    def mailmojo_url(self) -> str:
        return self.urls["mailmojo"]

    def build_settings(self) -> Settings:
        """The operator's settings, pointed at the fakes and a database of its own."""
        assert self.db_path is not None
        assert self.urls
        creds = self.credentials
        values: dict[str, Any] = {
            **DEMO_SETTINGS,
            "database_url": f"sqlite:///{self.db_path}",
            "host": HOST,
            "port": int(self.urls["bridge"].rsplit(":", 1)[1]),
            "public_url": None,
            "mailmodo_api_key": creds.mailmodo_api_key,
            "mailmodo_api_url": self.urls["mailmodo"],
            "clevertap_account_id": creds.clevertap_account_id,
            "clevertap_passcode": creds.clevertap_passcode,
            "clevertap_api_url": self.urls["clevertap"],
            "mailmojo_api_token": creds.mailmojo_api_token,
            "mailmojo_api_url": self.urls["mailmojo"],
            "clevertap_webhook_secrets": [CLEVERTAP_SECRET],
            "mailmodo_webhook_secrets": [MAILMODO_SECRET],
            "admin_token": ADMIN_TOKEN,
            "embedded_worker": True,
            **self.overrides,
        }
        # Validate the result, so an override of the wrong type fails here and not later.
        return Settings.model_validate({**self.base.model_dump(), **values})

    def _fresh_database(self) -> None:
        """A temporary directory by default; a given path is emptied: every run starts clean."""
        if self.db_path is None:
            self._tmpdir = Path(tempfile.mkdtemp(prefix="ctmm-sandbox-"))
            self.db_path = self._tmpdir / "sandbox.db"
            return
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{self.db_path}{suffix}").unlink(missing_ok=True)

    async def start(self) -> None:
        self._fresh_database()
        sockets = {name: bind(port) for name, port in self.ports.items()}
        self.urls = {
            name: f"http://{HOST}:{sock.getsockname()[1]}" for name, sock in sockets.items()
        }
        self.settings = self.build_settings()
        creds = self.credentials
        apps: list[tuple[FastAPI, socket.socket, Literal["on", "off"]]] = [
            (create_fake_mailmodo(creds.mailmodo_api_key), sockets["mailmodo"], "off"),
            (
                create_fake_clevertap(creds.clevertap_account_id, creds.clevertap_passcode),
                sockets["clevertap"],
                "off",
            ),
            (create_fake_mailmojo(creds.mailmojo_api_token), sockets["mailmojo"], "off"),
            (create_app(self.settings), sockets["bridge"], "on"),
        ]
        try:
            try:
                async with asyncio.timeout(START_TIMEOUT):
                    for app, sock, lifespan in apps:
                        await self._serve(app, sock, lifespan)
            except TimeoutError:
                raise SandboxError(f"the sandbox did not start in {START_TIMEOUT:g} s") from None
        except BaseException:
            for sock in sockets.values():
                sock.close()
            await self.stop()
            raise

    async def _serve(
        self, app: FastAPI, sock: socket.socket, lifespan: Literal["on", "off"]
    ) -> None:
        server: uvicorn.Server
        if lifespan == "on" and self.settings is not None:
            # The bridge: the same server, limits and timeouts as `serve`.
            server = build_server(app, self.settings, log_level="warning", handle_signals=False)
        else:
            config = uvicorn.Config(
                app,
                lifespan=lifespan,
                log_config=None,
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=5,
            )
            server = _Server(config)
        task = asyncio.create_task(_run(server, sock), name=f"sandbox:{sock.getsockname()}")
        self._servers.append((server, task, sock))
        while not server.started:
            if task.done():
                task.result()  # raises what stopped it, if anything did
                raise SandboxError(f"the server on {sock.getsockname()} did not start")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """The bridge first (its worker may be talking to a fake), then the fakes."""
        for server, task, sock in reversed(self._servers):
            server.should_exit = True
            try:
                await asyncio.wait_for(asyncio.shield(task), 15)
            except TimeoutError:
                server.force_exit = True
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 5)
            except Exception:  # noqa: S110 - a server that crashed is stopped too
                pass
            sock.close()
        self._servers.clear()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def instructions(self) -> str:
        """What to paste, in order, to walk the round trip and to watch retries."""
        assert self.settings is not None
        return render_instructions(self.urls, self.settings, self.db_path)


def _curl(*parts: str, body: object | None = None, url: str, split: bool = False) -> str:
    """A ``curl`` line to paste; ``split`` puts the URL and the body on lines of their own."""
    words = ["curl", *(p if p.startswith("-") else shlex.quote(p) for p in parts)]
    tail = [url] if body is None else [url, "-d " + shlex.quote(json.dumps(body))]
    if split:
        return " \\\n      ".join([" ".join(words), *tail])
    return " ".join([*words, *tail])


def render_instructions(urls: Mapping[str, str], settings: Settings, db_path: Path | None) -> str:
    """The walk-through; every command in it is sent verbatim by the sandbox tests."""
    bridge, mm, ct, mj = urls["bridge"], urls["mailmodo"], urls["clevertap"], urls["mailmojo"]
    json_header = ("-H", "Content-Type: application/json")
    step1 = _curl(
        "-u",
        f"clevertap:{CLEVERTAP_SECRET}",
        *json_header,
        url=f"{bridge}/clevertap/campaigns/{CAMPAIGN_ID}",
        body=CLEVERTAP_CALL,
        split=True,
    )
    step3 = _curl(
        *json_header,
        url=f"{bridge}/mailmodo/{MAILMODO_SECRET}/events",
        body=MAILMODO_CALLBACK,
        split=True,
    )
    step5 = _curl(
        "-u",
        f"clevertap:{CLEVERTAP_SECRET}",
        *json_header,
        url=f"{bridge}/clevertap/mailmojo/lists/{SANDBOX_LIST_ID}/contacts",
        body=MAILMOJO_CALL,
        split=True,
    )
    schedule = settings.retry_schedule_seconds
    retries = ", ".join(f"{delay:g} s" for delay in schedule)
    fails = min(3, len(schedule))

    def mode(body: dict[str, Any]) -> str:
        return _curl("-X", "POST", url=f"{mm}/_sandbox/mode", body=body)

    lines = [
        "ctmm-bridge sandbox: the bridge with fake CleverTap, Mailmodo and Mailmojo APIs, on this",
        "machine only. No accounts needed; everything is thrown away when you stop it (Ctrl-C).",
        "",
        f"  bridge          {bridge}   (database {db_path})",
        f"  fake Mailmodo   {mm}   (answers like api.mailmodo.com)",
        f"  fake CleverTap  {ct}   (answers like <region>.api.clevertap.com)",
        f"  fake Mailmojo   {mj}   (answers like api.mailmojo.no)",
        "",
        "A round trip: paste these into another terminal, one at a time.",
        "",
        f"1. CleverTap's webhook calls the bridge for {EMAIL}, whose CleverTap ID is",
        f"   {CLEVERTAP_ID}:",
        "",
        f"  {step1}",
        "",
        f"2. The bridge triggers the Mailmodo campaign '{CAMPAIGN_ID}' with data.clevertap_id =",
        f"   {CLEVERTAP_ID}. See what the fake Mailmodo received:",
        "",
        f"  curl {mm}/_sandbox/requests",
        "",
        f"3. {EMAIL} opens the email; Mailmodo calls the bridge back (the secret is in the path):",
        "",
        f"  {step3}",
        "",
        f"4. The bridge uploads 'MM Email Opened' to CleverTap for objectId {CLEVERTAP_ID}, the ID",
        "   it learned in step 1. See what the fake CleverTap received:",
        "",
        f"  curl {ct}/_sandbox/requests",
        "",
        f"5. Contact sync into Mailmojo: the fake Mailmojo already has {EMAIL} (first name Ann,",
        "   tags newsletter-2024, ct_vip, ct_trial). CleverTap syncs her profile into list "
        f"{SANDBOX_LIST_ID}:",
        "",
        f"  {step5}",
        "",
        "6. The bridge read the contact, then sent one PATCH: last_name and phone (the mobile)",
        "   filled because they were blank, first_name left as it was, ct_trial replaced by",
        "   ct_paying, newsletter-2024 untouched. See the calls, then the contact; repeat step 5",
        "   and the bridge reads again but writes nothing:",
        "",
        f"  curl {mj}/_sandbox/requests",
        f"  curl {mj}/_sandbox/contacts",
        "",
        "Watch retries: make a fake misbehave, repeat step 1 (or step 3 for CleverTap), then look",
        "at its requests and at the log below. The same works on the fake CleverTap's and the",
        "fake Mailmojo's addresses.",
        "",
        f"  {mode({'mode': 'fail', 'status': 503, 'count': fails})}",
        f"      the next {fails} calls get 503; the bridge tries again after {retries}, so",
        f"      attempt {fails + 1} gets through (after {len(schedule) + 1} failures it is dead)",
        f"  {mode({'mode': 'throttle', 'count': 5, 'retry_after': 2})}",
        "      429 with Retry-After: the bridge waits as told, without using up an attempt",
        f"  {mode({'mode': 'unauthorized'})}",
        "      401, as with a wrong API key: deliveries pause (see /readyz) and are probed",
        f"      every {settings.pause_probe_seconds:g} s",
        f"  {mode({'mode': 'ok'})}",
        "      back to normal; a paused upstream resumes at the next probe",
        "",
        f"Readiness: curl {bridge}/readyz   All routes: {bridge}/docs   Admin token: {ADMIN_TOKEN}",
        "In the sandbox an identical call is not a duplicate, so any command can be repeated.",
        "",
    ]
    return "\n".join(lines)


def run_sandbox(
    base: Settings,
    *,
    bridge_port: int | None,
    mailmodo_port: int,
    clevertap_port: int,
    mailmojo_port: int = 8083,
) -> None:
    """``ctmm-bridge sandbox``: start everything, print the walk-through, run until a signal."""
    configure_logging(base.model_copy(update={"log_format": LogFormat.CONSOLE}))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        sandbox = Sandbox(
            base,
            bridge_port=bridge_port,
            mailmodo_port=mailmodo_port,
            clevertap_port=clevertap_port,
            mailmojo_port=mailmojo_port,
        )
        async with sandbox:
            sys.stdout.write(sandbox.instructions() + "\n")
            sys.stdout.flush()
            await stop.wait()
            sys.stderr.write("stopping the sandbox…\n")

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
