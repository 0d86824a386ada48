"""Mailmojo's cheap live check for ``ctmm-bridge check``."""

from __future__ import annotations

import httpx

from app.config import Settings
from app.mailmojo.config import MailmojoConfig
from app.upstream import CheckResult, check_get, check_message, check_unreachable

NAME = "mailmojo"


def check_mailmojo(
    settings: Settings, *, timeout: float = 10.0, transport: httpx.BaseTransport | None = None
) -> CheckResult:
    """``GET /v1/lists/``: cheap, read-only, and needs a valid token. Mailmojo is optional, so
    a missing token is only a warning."""
    config = MailmojoConfig.from_settings(settings)
    base = config.api_url.rstrip("/")
    if not config.api_token:
        return CheckResult(
            NAME,
            "warn",
            "not configured (BRIDGE_MAILMOJO_API_TOKEN): Mailmojo contact syncs are kept but "
            "none is sent",
        )
    try:
        response = check_get(
            f"{base}/v1/lists/",
            {"Authorization": f"Bearer {config.api_token}"},
            timeout,
            transport,
        )
    except httpx.HTTPError as exc:
        return check_unreachable(NAME, base, exc, timeout)
    code = response.status_code
    if 200 <= code < 300:
        return CheckResult(NAME, "ok", f"Mailmojo accepted the API token ({base})")
    if code in (401, 403):
        return CheckResult(
            NAME,
            "fail",
            f"Mailmojo rejected the API token (HTTP {code}: {check_message(response)}); "
            "check BRIDGE_MAILMOJO_API_TOKEN",
        )
    if code == 429:
        return CheckResult(
            NAME, "warn", "Mailmojo is throttling (HTTP 429); the token could not be checked now"
        )
    if code >= 500:
        return CheckResult(
            NAME, "fail", f"Mailmojo is failing (HTTP {code}); try again later ({base})"
        )
    return CheckResult(
        NAME,
        "fail",
        f"Mailmojo answered HTTP {code} ({check_message(response)}); is "
        f"BRIDGE_MAILMOJO_API_URL={base} right?",
    )
