"""A small fake of Mailmojo's contact API for the sandbox (``contact-sync.md`` §4).

It checks the Bearer token, keeps contacts in memory (seeded with the existing contact of
§5's worked example, so the first sync shows the fill-blank PATCH), and records every call
like the other fakes (``GET /_sandbox/requests``, ``POST /_sandbox/mode``).
``GET /_sandbox/contacts`` shows the contacts as the fake now holds them.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import Response

from app.sandbox.fakes import (
    FakeUpstream,
    Fault,
    Handler,
    _same,
    _valid_email,
    control_router,
    pretty,
    serve_call,
)

#: The list the sandbox's printed command syncs into.
SANDBOX_LIST_ID = 1
#: The existing contact of contact-sync.md §5.
SEEDED_CONTACT: dict[str, Any] = {
    "email": "ann@example.com",
    "first_name": "Ann",
    "last_name": None,
    "phone": None,
    "tags": ["newsletter-2024", "ct_vip", "ct_trial"],
    "status": "subscribed",
    "list_associations": [
        {"email": "ann@example.com", "list_id": SANDBOX_LIST_ID, "status": "subscribed"}
    ],
}
_WRITABLE = ("first_name", "last_name", "name", "phone", "tags", "custom")


def create_fake_mailmojo(api_token: str) -> FastAPI:
    """Mailmojo's contact read, subscribe and update, and its list listing (the live check)."""
    fake = FakeUpstream("mailmojo")
    app = FastAPI(title="fake Mailmojo (sandbox)", docs_url=None, redoc_url=None)
    app.state.fake = fake
    app.include_router(control_router(fake))
    contacts: dict[str, dict[str, Any]] = {"ann@example.com": copy.deepcopy(SEEDED_CONTACT)}

    def authorized(request: Request) -> bool:
        return _same(request.headers.get("authorization"), f"Bearer {api_token}")

    def fault_answer(fault: Fault) -> tuple[Any, dict[str, str]]:
        messages = {
            "throttle": "Request was throttled.",
            "unauthorized": "Invalid token.",
            "fail": f"Sandbox: simulated failure (HTTP {fault.status})",
        }
        return {"detail": messages[fault.mode]}, {}

    async def call(request: Request, handle: Handler) -> Response:
        return await serve_call(
            fake,
            request,
            authorized=authorized,
            unauthorized={"detail": "Invalid token."},
            fault_answer=fault_answer,
            handle=handle,
        )

    def apply(contact: dict[str, Any], body: dict[str, Any]) -> None:
        for key in _WRITABLE:
            if key in body:
                contact[key] = body[key]

    async def lists(_request: Request, _body: Any) -> tuple[int, Any]:
        return 200, [{"id": SANDBOX_LIST_ID, "name": "Sandbox list"}]

    def read(email: str) -> Handler:
        async def handle(_request: Request, _body: Any) -> tuple[int, Any]:
            contact = contacts.get(email.lower())
            return (200, contact) if contact is not None else (404, {"detail": "Not found."})

        return handle

    def update(email: str) -> Handler:
        async def handle(_request: Request, body: Any) -> tuple[int, Any]:
            contact = contacts.get(email.lower())
            if contact is None:
                return 404, {"detail": "Not found."}
            if not isinstance(body, dict):
                return 400, {"detail": "A JSON object is required."}
            apply(contact, body)
            return 200, {"email": contact["email"]}

        return handle

    def subscribe(list_id: int) -> Handler:
        async def handle(_request: Request, body: Any) -> tuple[int, Any]:
            if list_id != SANDBOX_LIST_ID:
                return 404, {"detail": "Not found."}
            if not isinstance(body, dict) or not _valid_email(body.get("email")):
                return 400, {"email": ["Enter a valid email address."]}
            email = str(body["email"]).strip()
            contact = contacts.get(email.lower())
            if contact is None:
                contact = {"email": email, "tags": [], "status": "subscribed"}
                contacts[email.lower()] = contact
            associations = contact.setdefault("list_associations", [])
            if not any(a["list_id"] == list_id for a in associations):
                added = datetime.now(UTC).isoformat(timespec="seconds")
                associations.append(
                    {"email": email, "list_id": list_id, "status": "subscribed", "added": added}
                )
            apply(contact, body)
            return 201, contact

        return handle

    @app.get("/v1/lists/")
    async def get_lists(request: Request) -> Response:
        return await call(request, lists)

    @app.get("/v1/contacts/{email}/")
    async def get_contact(request: Request, email: str) -> Response:
        return await call(request, read(email))

    @app.patch("/v1/contacts/{email}/")
    async def update_contact(request: Request, email: str) -> Response:
        return await call(request, update(email))

    @app.post("/v1/lists/{list_id}/subscribers/")
    async def subscribe_contact(request: Request, list_id: int) -> Response:
        return await call(request, subscribe(list_id))

    @app.get("/_sandbox/contacts")
    async def show_contacts() -> Response:
        return pretty({"fake": fake.name, "contacts": list(contacts.values())})

    return app
