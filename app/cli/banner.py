"""The banner ``serve`` and ``credentials`` print: the URLs and secrets to paste."""

from __future__ import annotations

from urllib.parse import urlsplit

from app import __version__
from app.config import Settings
from app.db import shown_url
from app.security import Credentials, masked

_LOOPBACK = ("127.", "localhost", "::1", "[::1]")


def base_url(settings: Settings) -> str:
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host  # noqa: S104
    return f"http://{host}:{settings.port}"


def reachability_warnings(base: str) -> list[str]:
    """Why CleverTap and Mailmodo (SaaS on the internet) could not use ``base``, if they can't."""
    parts = urlsplit(base)
    host = parts.hostname or ""
    if host.startswith(_LOOPBACK) or host in _LOOPBACK:
        return [
            f"WARNING: {base} is only reachable from this machine; CleverTap and Mailmodo cannot "
            "call it. Put the bridge behind HTTPS and set BRIDGE_PUBLIC_URL to its public "
            "address (README: Going live).",
        ]
    if parts.scheme != "https":
        return [
            f"WARNING: {base} is plain http; the webhook secrets would cross the internet "
            "unencrypted. Serve it over HTTPS and set BRIDGE_PUBLIC_URL=https://… "
            "(README: Going live).",
        ]
    return []


def banner(settings: Settings, credentials: Credentials, *, reveal: bool = False) -> str:
    """What a newcomer pastes into CleverTap; printed on stdout, never logged.

    A generated secret is shown in full only on the start that generated it, or with
    ``reveal`` (``ctmm-bridge credentials``): later starts mask it, so that ``docker logs`` and
    log shippers do not collect it on every restart.
    """
    base = base_url(settings)
    hidden: list[str] = []

    def show(name: str, value: str, configured: str) -> str:
        if name not in credentials.generated:
            return configured
        if reveal or name in credentials.created:
            return value
        hidden.append(name)
        return masked(value)

    shown = show(
        "clevertap_webhook_secret",
        credentials.clevertap_secrets[0],
        "(the first value of BRIDGE_CLEVERTAP_WEBHOOK_SECRETS)",
    )
    mm_secret = show(
        "mailmodo_webhook_secret",
        credentials.mailmodo_secrets[0],
        "<BRIDGE_MAILMODO_WEBHOOK_SECRETS>",
    )
    admin = show("admin_token", credentials.admin_token, "(BRIDGE_ADMIN_TOKEN)")
    lines = [
        f"ctmm-bridge {__version__} on {base}   database: {shown_url(settings.database_url)}",
        "",
        "CleverTap → Mailmodo: in CleverTap, Settings > Channels > Webhooks, a POST webhook to",
        f"  trigger a campaign   {base}/clevertap/campaigns/<MAILMODO_CAMPAIGN_ID>",
        f"  start a journey      {base}/clevertap/journeys/<MAILMODO_JOURNEY_ID>/start",
        f"  abort a journey      {base}/clevertap/journeys/<MAILMODO_JOURNEY_ID>/abort",
        f"  sync contacts        {base}/clevertap/lists/<MAILMODO_LIST_NAME>/contacts",
        f"  opt-outs             {base}/clevertap/consent/unsubscribe",
        "                       (a webhook campaign on CleverTap's Channel Unsubscribed event)",
        f"  opt-ins              {base}/clevertap/consent/resubscribe",
        f"  Authentication: Basic Authorization, user name: clevertap, password: {shown}",
        f"  (or no authentication plus the header  X-Bridge-Secret: {shown})",
        "CleverTap → Mailmojo (same authentication):",
        f"  sync contacts        {base}/clevertap/mailmojo/lists/<MAILMOJO_LIST_ID>/contacts",
        "",
        "Mailmodo → CleverTap: in a Mailmodo journey, a Webhook card (after a condition card) to",
        f"  {base}/mailmodo/{mm_secret}/events/<opened|clicked|form_submitted|bounced|"
        "unsubscribed|spam>",
        f"  form-submission webhooks and other callbacks: {base}/mailmodo/{mm_secret}/events",
        "",
        f"Admin token (Authorization: Bearer …): {admin}",
        f"Health: {base}/healthz   Readiness: {base}/readyz",
    ]
    if hidden:
        lines += [
            "",
            "Secrets generated on an earlier start are shown masked (…); "
            "`ctmm-bridge credentials` prints them in full.",
        ]
    if warnings := reachability_warnings(base):
        lines += ["", *warnings]
    if not (settings.clevertap_account_id and settings.clevertap_passcode):
        lines += [
            "",
            "BRIDGE_CLEVERTAP_ACCOUNT_ID / BRIDGE_CLEVERTAP_PASSCODE are not set: Mailmodo "
            "activity is stored but not uploaded until they are.",
        ]
    if not settings.mailmodo_api_key:
        lines += [
            "",
            "BRIDGE_MAILMODO_API_KEY is not set: calls are stored but not delivered until it is.",
        ]
    return "\n".join(lines)
