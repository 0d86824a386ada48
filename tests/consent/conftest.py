"""The consent loop end to end: the real app (ASGI), the deliverer and uploader the runner
would build, Mailmodo and CleverTap faked with respx, time moved by the ``clock`` fixture.

``Loop`` bundles them: ``send`` posts a CleverTap campaign call and delivers it, ``later``
moves time past a read slot and runs the workers, ``contact`` sets what the fake Mailmodo
answers for a contact's status read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest
import respx
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.clock import ManualClock
from app.consent import repository as consent_repo
from app.consent.models import StatusReadSlot
from app.outbox.models import Delivery, State
from app.state import BridgeState
from app.worker.build import build_clevertap_uploader, build_mailmodo_deliverer
from app.worker.delivery import MailmodoDeliverer
from app.worker.upload import CleverTapUploader
from tests.conftest import CLEVERTAP_URL, CT_AUTH, MAILMODO_URL, make_settings, profiles_body
from tests.factories import all_deliveries
from tests.worker.conftest_upload import running_app

SUBSCRIBED = {"unsubscribed": False, "blocked": False}


@dataclass
class Loop:
    client: httpx.AsyncClient
    state: BridgeState
    clock: ManualClock
    mailmodo: respx.MockRouter
    clevertap: respx.MockRouter
    deliverer: MailmodoDeliverer
    uploader: CleverTapUploader
    #: What the fake Mailmodo answers for each contact's status read.
    contacts: dict[str, Any] = field(default_factory=dict)
    uploads: list[list[dict[str, Any]]] = field(default_factory=list)
    subscribes: list[list[dict[str, Any]]] = field(default_factory=list)
    mm_writes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: Mailmodo paths the fake refuses with a 400.
    refuse: set[str] = field(default_factory=set)

    @property
    def engine(self) -> Engine:
        return self.state.engine

    def contact(self, email: str, **status: Any) -> None:
        self.contacts[email] = {"email": email, "contactIdentifier": "c-1", "data": {}, **status}

    async def post(self, path: str, *emails: str, **extra: Any) -> list[int]:
        resp = await self.client.post(path, json=profiles_body(*emails, **extra), headers=CT_AUTH)
        assert resp.status_code == 200, resp.text
        ids: list[int] = resp.json()["ids"]
        return ids

    async def send(self, *emails: str, campaign: str = "camp-1") -> list[int]:
        """A CleverTap campaign call for ``emails``, delivered to the fake Mailmodo."""
        ids = await self.post(f"/clevertap/campaigns/{campaign}", *emails)
        await self.work()
        return ids

    async def work(self, rounds: int = 3) -> None:
        """Run both workers until nothing due is left (a few rounds)."""
        for _ in range(rounds):
            mm = await self.deliverer.run_once(100)
            ct = await self.uploader.run_once()
            if not (mm.claimed or ct.claimed):
                return

    async def later(self, hours: float) -> None:
        self.clock.advance(hours * 3600 + 1)
        await self.work()

    def rows(self, operation: str | None = None) -> list[Delivery]:
        return [r for r in all_deliveries(self.engine) if operation in (None, r.operation)]

    def reads(self, state: State | None = None) -> list[Delivery]:
        return [r for r in self.rows("contact.status") if state in (None, r.state)]

    def slots(self) -> list[StatusReadSlot]:
        """The booked read slots, in due order."""
        with Session(self.engine) as session:
            return list(
                session.scalars(
                    select(StatusReadSlot).order_by(
                        StatusReadSlot.due_at, StatusReadSlot.slot_seconds
                    )
                )
            )

    def events(self) -> list[dict[str, Any]]:
        """Every event record CleverTap received, in order."""
        return [r for batch in self.uploads for r in batch if r["type"] == "event"]

    def profiles(self) -> list[dict[str, Any]]:
        return [r for batch in self.uploads for r in batch if r["type"] == "profile"]

    def log(self, email: str) -> list[SimpleNamespace]:
        with self.engine.connect() as conn:
            return [SimpleNamespace(**e) for e in reversed(consent_repo.log_of(conn, email))]


def _records(request: httpx.Request) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = orjson.loads(request.content)["d"]
    return records


def _processed(count: int) -> httpx.Response:
    return httpx.Response(200, json={"status": "success", "processed": count, "unprocessed": []})


@pytest.fixture
def loop_settings() -> dict[str, Any]:
    """Overrides of the loop's settings (a test module may replace this fixture)."""
    return {}


@pytest.fixture
async def loop(
    database_url: str,
    clock: ManualClock,
    mailmodo: respx.MockRouter,
    clevertap_api: respx.MockRouter,
    loop_settings: dict[str, Any],
) -> AsyncIterator[Loop]:
    settings = make_settings(
        database_url, **({"reconcile_schedule_hours": [1.0, 24.0, 72.0]} | loop_settings)
    )
    async with running_app(settings) as (client, state):
        deliverer = build_mailmodo_deliverer(state.engine, settings, "w-mm")
        uploader = build_clevertap_uploader(state.engine, settings, "w-ct")
        assert deliverer is not None
        assert uploader is not None
        loop = Loop(client, state, clock, mailmodo, clevertap_api, deliverer, uploader)

        def status(request: httpx.Request) -> httpx.Response:
            email = request.url.params["email"]
            if email not in loop.contacts:
                return httpx.Response(404, json={"message": "Contact not found"})
            return httpx.Response(200, json=loop.contacts[email])

        def upload(request: httpx.Request) -> httpx.Response:
            loop.uploads.append(_records(request))
            return _processed(len(loop.uploads[-1]))

        def subscribe(request: httpx.Request) -> httpx.Response:
            loop.subscribes.append(_records(request))
            return _processed(len(loop.subscribes[-1]))

        def write(request: httpx.Request) -> httpx.Response:
            if request.url.path in loop.refuse:
                return httpx.Response(400, json={"message": "refused"})
            loop.mm_writes.append((request.url.path, orjson.loads(request.content)))
            return httpx.Response(200, json={"success": True, "message": "ok", "ref": "r-1"})

        mailmodo.get("/api/v1/getContactDetails").mock(side_effect=status)
        mailmodo.post(path__regex=r"^/api/v1/(triggerCampaign/.+|contacts/.+)$").mock(
            side_effect=write
        )
        mailmodo.post(path__regex=r"^/hooks/start/.+$").mock(side_effect=write)
        clevertap_api.post("/1/upload").mock(side_effect=upload)
        clevertap_api.post("/1/subscribe").mock(side_effect=subscribe)
        try:
            yield loop
        finally:
            await deliverer.client.aclose()
            await uploader.client.aclose()


__all__ = ["CLEVERTAP_URL", "MAILMODO_URL", "SUBSCRIBED", "Loop"]
