"""Fixtures for Mailmojo tests: an app with a Mailmojo token, a stateful fake of Mailmojo's
contact API at the HTTP boundary (respx), and a deliverer on the app's database.

The helpers are plain functions and classes so other test packages can import them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import httpx
import orjson
import pytest
import respx

from app.config import Settings
from app.state import BridgeState
from app.worker.build import build_mailmojo_deliverer
from app.worker.mailmojo import MailmojoDeliverer
from tests.conftest import make_settings

MAILMOJO_URL = "https://mailmojo.test"
MAILMOJO_TOKEN = "mj-test-token"
LIST_ID = "42"
ROUTE = f"/clevertap/mailmojo/lists/{LIST_ID}/contacts"

CONTACT_PATH = r"^/v1/contacts/(?P<email>[^/]+)/$"
SUBSCRIBE_PATH = r"^/v1/lists/(?P<list_id>[^/]+)/subscribers/$"


@pytest.fixture
def settings(sqlite_url: str) -> Settings:
    """The app of these tests has a Mailmojo token (and a fast Mailmojo rate)."""
    return make_settings(
        sqlite_url,
        mailmojo_api_token=MAILMOJO_TOKEN,
        mailmojo_api_url=MAILMOJO_URL,
        mailmojo_rate_per_second=1000.0,
    )


@dataclass
class MojoStore:
    """Mailmojo's contacts as the fake holds them, and the writes it was sent.

    ``tags`` in a write replaces the list (the reading of ``contact-sync.md`` §4 the bridge
    relies on); a subscribe adds a list association.
    """

    contacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    writes: list[tuple[str, str, bytes]] = field(default_factory=list)

    def add(self, email: str, **fields: Any) -> dict[str, Any]:
        contact = {"email": email, "status": "subscribed", **fields}
        self.contacts[email.lower()] = contact
        return contact

    def read(self, request: httpx.Request, email: str) -> httpx.Response:
        contact = self.contacts.get(unquote(email).lower())
        if contact is None:
            return httpx.Response(404, json={"detail": "Not found."})
        return httpx.Response(200, json=contact)

    def patch(self, request: httpx.Request, email: str) -> httpx.Response:
        self.writes.append(("PATCH", request.url.path, request.content))
        contact = self.contacts.get(unquote(email).lower())
        if contact is None:
            return httpx.Response(404, json={"detail": "Not found."})
        contact.update(orjson.loads(request.content))
        return httpx.Response(200, json={"email": contact["email"]})

    def subscribe(self, request: httpx.Request, list_id: str) -> httpx.Response:
        self.writes.append(("POST", request.url.path, request.content))
        body = orjson.loads(request.content)
        body.pop("force_subscribe", None)
        contact = self.contacts.setdefault(
            body["email"].lower(), {"status": "subscribed", "list_associations": []}
        )
        contact.update(body)
        contact.setdefault("list_associations", []).append(
            {"email": body["email"], "list_id": int(list_id), "status": "subscribed"}
        )
        return httpx.Response(201, json=contact)


@dataclass
class FakeMailmojo:
    router: respx.MockRouter
    store: MojoStore
    read: respx.Route
    update: respx.Route
    subscribe: respx.Route


@pytest.fixture
def mailmojo() -> Iterator[FakeMailmojo]:
    """Mailmojo's contact API, faked statefully at the HTTP boundary."""
    store = MojoStore()
    with respx.mock(base_url=MAILMOJO_URL, assert_all_called=False) as router:
        yield FakeMailmojo(
            router,
            store,
            read=router.get(path__regex=CONTACT_PATH).mock(side_effect=store.read),
            update=router.patch(path__regex=CONTACT_PATH).mock(side_effect=store.patch),
            subscribe=router.post(path__regex=SUBSCRIBE_PATH).mock(side_effect=store.subscribe),
        )


@pytest.fixture
async def deliverer(state: BridgeState) -> AsyncIterator[MailmojoDeliverer]:
    built = build_mailmojo_deliverer(state.engine, state.settings, "mojo-test")
    assert built is not None
    yield built
    await built.client.aclose()


def ann_profile(**extra: Any) -> dict[str, Any]:
    """The profile of contact-sync.md §5."""
    return {
        "Email": "ann@example.com",
        "Identity": "u-42",
        "ObjectId": "__ann",
        "ProfileData": {
            "First Name": "Anna",
            "Last Name": "Lee",
            "Mobile": "+4790000001",
            "Phone": "+4722000002",
        },
        **extra,
    }


def worked_example_call(**extra: Any) -> dict[str, Any]:
    """A CleverTap call carrying §5's profile and wanted managed tags {vip, paying}."""
    return {
        "targetId": 1,
        "key_values": {"tags": "vip, paying"},
        "profiles": [ann_profile(**extra)],
    }
