"""Mailmodo's cheap live check for ``ctmm-bridge check``."""

from __future__ import annotations

import httpx

from app.config import Settings
from app.mailmodo.config import MailmodoConfig
from app.upstream import CheckResult, check_get, check_message, check_unreachable

NAME = "mailmodo"


def check_mailmodo(
    settings: Settings, *, timeout: float = 10.0, transport: httpx.BaseTransport | None = None
) -> CheckResult:
    """``GET /api/v1/getAllContactLists``: cheap, read-only, and needs a valid key."""
    config = MailmodoConfig.from_settings(settings)
    base = config.api_url.rstrip("/")
    if not config.api_key:
        return CheckResult(
            NAME, "fail", "BRIDGE_MAILMODO_API_KEY is not set: calls are kept but none is sent"
        )
    try:
        response = check_get(
            f"{base}/api/v1/getAllContactLists", {"mmApiKey": config.api_key}, timeout, transport
        )
    except httpx.HTTPError as exc:
        return check_unreachable(NAME, base, exc, timeout)
    code = response.status_code
    if 200 <= code < 300:
        return CheckResult(NAME, "ok", f"Mailmodo accepted the API key ({base})")
    if code in (401, 403):
        return CheckResult(
            NAME,
            "fail",
            f"Mailmodo rejected the API key (HTTP {code}: {check_message(response)}); "
            "check BRIDGE_MAILMODO_API_KEY",
        )
    if code == 429:
        return CheckResult(
            NAME, "warn", "Mailmodo is throttling (HTTP 429); the key could not be checked now"
        )
    if code >= 500:
        return CheckResult(
            NAME, "fail", f"Mailmodo is failing (HTTP {code}); try again later ({base})"
        )
    return CheckResult(
        NAME,
        "fail",
        f"Mailmodo answered HTTP {code} ({check_message(response)}); is "
        f"BRIDGE_MAILMODO_API_URL={base} right?",
    )
