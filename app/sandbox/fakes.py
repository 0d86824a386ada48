"""Small fakes of the Mailmodo and CleverTap APIs the bridge calls, for the sandbox.

They answer in the real APIs' shapes (see ``mailmodo.md`` and ``clevertap.md``), check the
credentials the bridge sends, and keep every call in memory so a newcomer can see what the
bridge sent (``GET /_sandbox/requests``). ``POST /_sandbox/mode`` makes a fake fail, throttle or
reject the credentials for a while, to watch the bridge retry, defer and pause.
"""

from __future__ import annotations

import copy
import re
import secrets
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

__all__ = [
    "FakeUpstream",
    "Mode",
    "create_fake_clevertap",
    "create_fake_mailmodo",
]

#: Calls kept per fake; older ones are forgotten so a long session cannot grow without bound.
MAX_KEPT_REQUESTS = 1000

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_NOT_JSON = object()


class Mode(BaseModel):
    """How a fake behaves; ``count`` calls (``None``: until told otherwise), then ``ok``."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["ok", "fail", "throttle", "unauthorized"] = "ok"
    status: int = Field(default=503, ge=400, le=599)
    count: int | None = Field(default=None, ge=1)
    retry_after: float | None = Field(default=None, ge=0, le=3600)


@dataclass(slots=True)
class Fault:
    """One simulated failure: the answer the fake gives instead of doing the work."""

    mode: str
    status: int
    retry_after: float | None


@dataclass(slots=True)
class FakeUpstream:
    """The state one fake keeps: its mode and the calls it has seen."""

    name: str
    mode: Mode = field(default_factory=Mode)
    requests: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_KEPT_REQUESTS))
    seen: int = 0

    def set_mode(self, mode: Mode) -> None:
        self.mode = mode

    def take_fault(self) -> Fault | None:
        """The failure this call gets, if any; counts the call against the mode's ``count``."""
        mode = self.mode
        if mode.mode == "ok":
            return None
        status = {"fail": mode.status, "throttle": 429, "unauthorized": 401}[mode.mode]
        if mode.count is not None:
            remaining = mode.count - 1
            self.mode = mode.model_copy(update={"count": remaining}) if remaining else Mode()
        return Fault(mode.mode, status, mode.retry_after)

    def record(
        self, request: Request, body: Any, status: int, answer: Any, fault: Fault | None
    ) -> None:
        self.seen += 1
        entry: dict[str, Any] = {
            "n": self.seen,
            "at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "method": request.method,
            "path": request.url.path,
        }
        if request.url.query:
            entry["query"] = dict(request.query_params)
        if body is not None:
            entry["body"] = "(not JSON)" if body is _NOT_JSON else copy.deepcopy(body)
        entry["status"] = status
        # A copy: the fake's own state (a Mailmojo contact a later PATCH changes) must not
        # rewrite what an earlier answer said.
        entry["answer"] = copy.deepcopy(answer)
        if fault is not None:
            entry["simulated"] = fault.mode
        self.requests.append(entry)

    def describe(self) -> dict[str, Any]:
        shown = self.mode.model_dump(exclude_none=True)
        if self.mode.mode != "fail":
            shown.pop("status", None)
        return shown


def pretty(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Indented JSON with a final newline: these answers are read in a terminal."""
    return Response(
        orjson.dumps(payload, option=orjson.OPT_INDENT_2) + b"\n",
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def parse_body(raw: bytes) -> Any:
    """JSON whatever the content type (``curl -d`` sends form-encoded); ``None`` when empty."""
    if not raw.strip():
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _NOT_JSON


def control_router(fake: FakeUpstream) -> APIRouter:
    """``/_sandbox/...``: what the fake saw, and how it should behave."""
    router = APIRouter(prefix="/_sandbox")

    @router.get("/requests")
    async def requests(last: int | None = None) -> Response:
        kept = list(fake.requests)
        if last is not None:
            kept = kept[-last:] if last > 0 else []
        return pretty(
            {"fake": fake.name, "mode": fake.describe(), "seen": fake.seen, "requests": kept}
        )

    @router.delete("/requests")
    async def forget() -> Response:
        fake.requests.clear()
        return pretty({"fake": fake.name, "requests": []})

    @router.get("/mode")
    async def get_mode() -> Response:
        return pretty({"fake": fake.name, "mode": fake.describe()})

    @router.post("/mode")
    async def set_mode(request: Request) -> Response:
        body = parse_body(await request.body())
        if body is _NOT_JSON or not isinstance(body, dict):
            return pretty({"error": 'send a JSON object, e.g. {"mode": "ok"}'}, 422)
        try:
            mode = Mode.model_validate(body)
        except ValidationError as exc:
            errors = [
                {"field": ".".join(str(p) for p in e["loc"]), "error": e["msg"]}
                for e in exc.errors()
            ]
            return pretty({"error": "invalid mode", "detail": errors}, 422)
        fake.set_mode(mode)
        return pretty({"fake": fake.name, "mode": fake.describe()})

    return router


Handler = Callable[[Request, Any], Awaitable[tuple[int, Any]]]
Responder = Callable[[Fault], tuple[Any, dict[str, str]]]


async def serve_call(
    fake: FakeUpstream,
    request: Request,
    *,
    authorized: Callable[[Request], bool],
    unauthorized: Any,
    fault_answer: Responder,
    handle: Handler,
) -> Response:
    """One API call: a simulated fault, else the credential check, else the real work."""
    body = parse_body(await request.body())
    fault = fake.take_fault()
    headers: dict[str, str] = {}
    if fault is not None:
        status = fault.status
        answer, headers = fault_answer(fault)
        if fault.retry_after is not None:
            headers["Retry-After"] = f"{fault.retry_after:g}"
    elif not authorized(request):
        status, answer = 401, unauthorized
    else:
        status, answer = await handle(request, body)
    fake.record(request, body, status, answer, fault)
    if isinstance(answer, str):
        return Response(answer, status_code=status, media_type="text/plain", headers=headers)
    return pretty(answer, status, headers)


def _same(given: str | None, expected: str) -> bool:
    return given is not None and secrets.compare_digest(given.encode(), expected.encode())


def _valid_email(value: object) -> bool:
    return isinstance(value, str) and bool(_EMAIL.match(value.strip()))


# --------------------------------------------------------------------------- Mailmodo

INVALID_EMAIL = "The provided email is not a valid email id"
_SUBSCRIBED: dict[str, Any] = {
    "unsubscribed": False,
    "unsubscribeReason": None,
    "unsubscribedEmailTypes": [],
    "blocked": False,
    "blockedReason": None,
}
#: What ``POST /_sandbox/contacts/{email}`` can make Mailmodo see (the reason is optional).
_MARKS: dict[str, Callable[[str | None], dict[str, Any]]] = {
    "subscribed": lambda _reason: dict(_SUBSCRIBED),
    "unsubscribed": lambda reason: {
        **_SUBSCRIBED,
        "unsubscribed": True,
        "unsubscribeReason": reason or "Clicked the unsubscribe link",
        "unsubscribedEmailTypes": ["Promotional"],
    },
    "bounced": lambda reason: {
        **_SUBSCRIBED,
        "blocked": True,
        "blockedReason": reason or "Hard bounce: mailbox does not exist",
    },
    "spam": lambda reason: {
        **_SUBSCRIBED,
        "blocked": True,
        "blockedReason": reason or "Marked as spam by the recipient",
    },
}


def create_fake_mailmodo(api_key: str) -> FastAPI:
    """Mailmodo's campaign and journey calls, checking ``mmApiKey`` like the real API."""
    fake = FakeUpstream("mailmodo")
    app = FastAPI(title="fake Mailmodo (sandbox)", docs_url=None, redoc_url=None)
    app.state.fake = fake
    app.include_router(control_router(fake))
    contacts: set[str] = set()
    list_id = str(uuid.uuid4())
    created_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

    def authorized(request: Request) -> bool:
        return _same(request.headers.get("mmapikey"), api_key)

    def fault_answer(fault: Fault) -> tuple[Any, dict[str, str]]:
        messages = {
            "throttle": "Too many requests",
            "unauthorized": "Invalid API key",
            "fail": f"Sandbox: simulated failure (HTTP {fault.status})",
        }
        return {"success": False, "message": messages[fault.mode]}, {}

    async def call(request: Request, handle: Handler) -> Response:
        return await serve_call(
            fake,
            request,
            authorized=authorized,
            unauthorized={"success": False, "message": "Invalid API key"},
            fault_answer=fault_answer,
            handle=handle,
        )

    def bad_body(body: Any) -> tuple[int, Any] | None:
        if isinstance(body, dict):
            return None
        return 400, {
            "Status": "400",
            "message": "the request body must be a JSON object",
            "errors": [],
        }

    async def trigger(_request: Request, body: Any) -> tuple[int, Any]:
        if (refused := bad_body(body)) is not None:
            return refused
        if not _valid_email(body.get("email")):
            # Mailmodo answers 200 here: only ``success`` tells that nothing was sent.
            return 200, {"success": False, "message": INVALID_EMAIL}
        contacts.add(str(body["email"]).strip().lower())
        return 200, {
            "success": True,
            "message": "Email scheduled successfully",
            "ref": str(uuid.uuid4()),
        }

    async def start(_request: Request, body: Any) -> tuple[int, Any]:
        if (refused := bad_body(body)) is not None:
            return refused
        if not _valid_email(body.get("email")):
            return 400, {"success": False, "message": INVALID_EMAIL}
        contacts.add(str(body["email"]).strip().lower())
        return 200, {"success": True, "message": "journey Executed", "ref": str(uuid.uuid4())}

    async def abort(_request: Request, body: Any) -> tuple[int, Any]:
        if (refused := bad_body(body)) is not None:
            return refused
        if not body.get("instanceId") and not _valid_email(body.get("email")):
            return 400, {"success": False, "status": "error", "message": INVALID_EMAIL}
        return 200, {"success": True, "message": "journey aborted"}

    statuses: dict[str, dict[str, Any]] = {}

    def status_of(email: str) -> dict[str, Any]:
        return statuses.setdefault(email, dict(_SUBSCRIBED))

    async def contact_details(request: Request, _body: Any) -> tuple[int, Any]:
        email = (request.query_params.get("email") or "").strip().lower()
        if not _valid_email(email):
            return 400, {"name": "ValidationError", "message": INVALID_EMAIL}
        if email not in contacts:
            return 404, {"success": False, "message": "Contact not found"}
        return 200, {
            "contactIdentifier": str(uuid.uuid5(uuid.NAMESPACE_URL, email)),
            "email": email,
            "data": {},
            **status_of(email),
        }

    def subscription(unsubscribe: bool) -> Handler:
        async def handle(_request: Request, body: Any) -> tuple[int, Any]:
            if (refused := bad_body(body)) is not None:
                return refused
            if not _valid_email(body.get("email")):
                return 400, {"success": False, "message": INVALID_EMAIL}
            email = str(body["email"]).strip().lower()
            contacts.add(email)
            current = status_of(email)
            if unsubscribe and current["unsubscribed"]:
                return 200, {"success": True, "message": "Contact already in suppression list"}
            statuses[email] = (
                {**_SUBSCRIBED, "unsubscribed": True, "unsubscribeReason": "Unsubscribed via API"}
                if unsubscribe
                else dict(_SUBSCRIBED)
            )
            return 200, {"success": True, "message": "Done"}

        return handle

    @app.post("/_sandbox/contacts/{email}")
    async def mark_contact(email: str, request: Request) -> Response:
        """Make Mailmodo see a contact unsubscribed, bounced, spam or subscribed again:
        ``{"status": "unsubscribed" | "bounced" | "spam" | "subscribed", "reason": "..."}``."""
        body = parse_body(await request.body())
        wanted = body.get("status") if isinstance(body, dict) else None
        reason = body.get("reason") if isinstance(body, dict) else None
        if wanted not in _MARKS:
            return pretty({"error": "status must be one of", "detail": sorted(_MARKS)}, 422)
        email = email.strip().lower()
        contacts.add(email)
        statuses[email] = _MARKS[str(wanted)](reason if isinstance(reason, str) else None)
        return pretty({"email": email, **statuses[email]})

    @app.get("/api/v1/getContactDetails")
    async def get_contact_details(request: Request) -> Response:
        return await call(request, contact_details)

    @app.post("/api/v1/contacts/unsubscribe")
    async def unsubscribe(request: Request) -> Response:
        return await call(request, subscription(True))

    @app.post("/api/v1/contacts/resubscribe")
    async def resubscribe(request: Request) -> Response:
        return await call(request, subscription(False))

    async def lists(_request: Request, _body: Any) -> tuple[int, Any]:
        return 200, {
            "listDetails": [
                {
                    "id": list_id,
                    "name": "Sandbox contacts",
                    "created_at": created_at,
                    "contacts_count": len(contacts),
                }
            ]
        }

    @app.post("/api/v1/triggerCampaign/{campaign_id}")
    async def trigger_campaign(request: Request, campaign_id: str) -> Response:
        return await call(request, trigger)

    @app.post("/hooks/start/{journey_id}")
    async def start_journey(request: Request, journey_id: str) -> Response:
        return await call(request, start)

    @app.post("/hooks/abort/{journey_id}")
    async def abort_journey(request: Request, journey_id: str) -> Response:
        return await call(request, abort)

    @app.get("/api/v1/getAllContactLists")
    async def get_all_contact_lists(request: Request) -> Response:
        return await call(request, lists)

    return app


# --------------------------------------------------------------------------- CleverTap

_IDENTIFIERS = ("objectId", "identity", "FBID", "GPID")


def _record_error(number: int, record: Any) -> dict[str, Any] | None:
    """CleverTap's per-record refusal (HTTP 200, ``unprocessed``), or None if it is fine."""
    code: int | None = None
    message = ""
    if not isinstance(record, dict):
        code, message = 524, "Record is neither an event nor a profile"
    elif record.get("type") == "event":
        name = record.get("evtName")
        ts = record.get("ts")
        if not isinstance(name, str) or not name.strip():
            code, message = 509, "Event Name is incorrect. ErrorCode: 509 - Event name is mandatory"
        elif not isinstance(record.get("evtData", {}), dict):
            code, message = 512, "Event data is incorrect. ErrorCode: 512 - Invalid event structure"
        elif not any(record.get(key) for key in _IDENTIFIERS):
            code, message = 523, "Identity is missing. ErrorCode: 523 - Identity not set"
        elif ts is not None and (
            not isinstance(ts, int) or isinstance(ts, bool) or not 0 < ts < 100_000_000_000
        ):
            code, message = 525, "Timestamp is incorrect. ErrorCode: 525 - ts must be epoch seconds"
    elif record.get("type") == "profile":
        if not any(record.get(key) for key in _IDENTIFIERS):
            code, message = 523, "Identity is missing. ErrorCode: 523 - Identity not set"
    else:
        code, message = 524, "Record is neither an event nor a profile"
    if code is None:
        return None
    return {
        "status": "fail",
        "code": code,
        "error": f"{message}. Skipped record number : {number}",
        "record": record,
    }


def create_fake_clevertap(account_id: str, passcode: str) -> FastAPI:
    """CleverTap's upload and profile APIs, checking the account id and passcode headers."""
    fake = FakeUpstream("clevertap")
    app = FastAPI(title="fake CleverTap (sandbox)", docs_url=None, redoc_url=None)
    app.state.fake = fake
    app.include_router(control_router(fake))
    profiles: dict[str, dict[str, Any]] = {}

    def authorized(request: Request) -> bool:
        return _same(request.headers.get("x-clevertap-account-id"), account_id) and _same(
            request.headers.get("x-clevertap-passcode"), passcode
        )

    def fault_answer(fault: Fault) -> tuple[Any, dict[str, str]]:
        if fault.mode == "throttle":
            return "Too many concurrent requests", {}
        if fault.mode == "unauthorized":
            return {"status": "fail", "error": "Account ID is not valid", "code": 401}, {}
        error = f"Sandbox: simulated failure (HTTP {fault.status})"
        return {"status": "fail", "error": error, "code": fault.status}, {}

    async def call(request: Request, handle: Handler) -> Response:
        return await serve_call(
            fake,
            request,
            authorized=authorized,
            unauthorized={"status": "fail", "error": "Account ID is not valid", "code": 401},
            fault_answer=fault_answer,
            handle=handle,
        )

    def remember(record: dict[str, Any]) -> None:
        key = next(f"{k}:{record[k]}" for k in _IDENTIFIERS if record.get(k))
        profile = profiles.setdefault(key, {"profileData": {}, "events": {}})
        for k in _IDENTIFIERS:
            if record.get(k):
                profile[k] = record[k]
        if record.get("type") == "profile":
            profile["profileData"].update(record.get("profileData") or {})
            return
        ts = record.get("ts") or int(datetime.now(UTC).timestamp())
        seen = profile["events"].setdefault(
            record["evtName"], {"count": 0, "first_seen": ts, "last_seen": ts}
        )
        seen["count"] += 1
        seen["last_seen"] = max(seen["last_seen"], ts)

    async def upload(_request: Request, body: Any) -> tuple[int, Any]:
        records = body.get("d") if isinstance(body, dict) else None
        if not isinstance(records, list):
            return 400, {"status": "fail", "error": "Malformed request", "code": 400}
        unprocessed = []
        for number, record in enumerate(records, start=1):
            error = _record_error(number, record)
            if error is None:
                remember(record)
            else:
                unprocessed.append(error)
        processed = len(records) - len(unprocessed)
        status = "success" if not unprocessed else ("partial" if processed else "fail")
        return 200, {"status": status, "processed": processed, "unprocessed": unprocessed}

    async def profile(request: Request, _body: Any) -> tuple[int, Any]:
        query = request.query_params
        wanted = [
            f"{key}:{query[name]}"
            for name, key in (
                ("objectId", "objectId"),
                ("identity", "identity"),
                ("email", "identity"),
            )
            if query.get(name)
        ]
        if not wanted:
            return 400, {
                "status": "fail",
                "error": "one of email, identity or objectId is required",
                "code": 400,
            }
        for key in wanted:
            if key in profiles:
                return 200, {"status": "success", "record": profiles[key]}
        # The real answer for an unknown profile is undocumented; this shape is a guess.
        return 200, {"status": "fail", "error": "User not found", "code": 404}

    async def subscribe(_request: Request, body: Any) -> tuple[int, Any]:
        records = body.get("d") if isinstance(body, dict) else None
        if not isinstance(records, list):
            return 400, {"status": "fail", "error": "Malformed request", "code": 400}
        for record in records:
            if isinstance(record, dict) and record.get("value"):
                key = f"email:{record['value']}"
                profiles.setdefault(key, {"profileData": {}, "events": {}})["subscription"] = (
                    record.get("status")
                )
        return 200, {"status": "success", "processed": len(records), "unprocessed": []}

    @app.post("/1/upload")
    async def upload_route(request: Request) -> Response:
        return await call(request, upload)

    @app.post("/1/subscribe")
    async def subscribe_route(request: Request) -> Response:
        return await call(request, subscribe)

    @app.get("/1/profile.json")
    async def profile_route(request: Request) -> Response:
        return await call(request, profile)

    return app
