"""CleverTap's cheap live check for ``ctmm-bridge check``."""

from __future__ import annotations

import httpx

from app.clevertap.config import CleverTapConfig
from app.config import Settings
from app.upstream import CheckResult, check_get, check_message, check_unreachable

NAME = "clevertap"
#: A profile that cannot exist: looking it up proves the credentials and changes nothing.
CHECK_EMAIL = "ctmm-bridge-check@example.invalid"


def check_clevertap(
    settings: Settings, *, timeout: float = 10.0, transport: httpx.BaseTransport | None = None
) -> CheckResult:
    """Look up a profile that cannot exist: any answer but 401/403 proves the credentials."""
    config = CleverTapConfig.from_settings(settings)
    account, passcode = config.account_id, config.passcode
    if not account and not passcode:
        return CheckResult(
            NAME,
            "warn",
            "not configured (BRIDGE_CLEVERTAP_ACCOUNT_ID / BRIDGE_CLEVERTAP_PASSCODE): Mailmodo "
            "activity is kept but not uploaded",
        )
    if not account or not passcode:
        missing = "BRIDGE_CLEVERTAP_PASSCODE" if account else "BRIDGE_CLEVERTAP_ACCOUNT_ID"
        return CheckResult(NAME, "fail", f"{missing} is not set; CleverTap needs both")
    base = config.base_url
    where = (
        f"BRIDGE_CLEVERTAP_API_URL={config.api_url}"
        if config.api_url
        else f"BRIDGE_CLEVERTAP_REGION={config.region}"
    )
    try:
        response = check_get(
            f"{base}/1/profile.json?email={CHECK_EMAIL}",
            {"X-CleverTap-Account-Id": account, "X-CleverTap-Passcode": passcode},
            timeout,
            transport,
        )
    except httpx.HTTPError as exc:
        return check_unreachable(NAME, base, exc, timeout)
    code = response.status_code
    if code in (401, 403):
        return CheckResult(
            NAME,
            "fail",
            f"CleverTap rejected the account id/passcode — or the region is wrong ({where}); "
            f"HTTP {code}: {check_message(response)}",
        )
    if code == 429:
        return CheckResult(
            NAME, "warn", "CleverTap is throttling (HTTP 429); the credentials could not be checked"
        )
    if code >= 500:
        return CheckResult(NAME, "fail", f"CleverTap is failing (HTTP {code}); try again later")
    return CheckResult(NAME, "ok", f"CleverTap accepted the account id/passcode ({base})")
