"""The banner ``serve`` and ``credentials`` print: the URLs and secrets to paste."""

from __future__ import annotations

from app import __version__
from app.config import Settings
from app.db import shown_url
from app.security import Credentials


def base_url(settings: Settings) -> str:
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host  # noqa: S104
    return f"http://{host}:{settings.port}"


def banner(settings: Settings, credentials: Credentials) -> str:
    """What a newcomer pastes into CleverTap; printed on stdout, never logged."""
    base = base_url(settings)
    secret = credentials.clevertap_secrets[0]
    shown = (
        secret
        if "clevertap_webhook_secret" in credentials.generated
        else "(the first value of BRIDGE_CLEVERTAP_WEBHOOK_SECRETS)"
    )
    mm_secret = (
        credentials.mailmodo_secrets[0]
        if "mailmodo_webhook_secret" in credentials.generated
        else "<BRIDGE_MAILMODO_WEBHOOK_SECRETS>"
    )
    admin = (
        credentials.admin_token
        if "admin_token" in credentials.generated
        else "(BRIDGE_ADMIN_TOKEN)"
    )
    lines = [
        f"ctmm-bridge {__version__} on {base}   database: {shown_url(settings.database_url)}",
        "",
        "CleverTap → Mailmodo: in CleverTap, Settings > Channels > Webhooks, a POST webhook to",
        f"  trigger a campaign   {base}/clevertap/campaigns/<MAILMODO_CAMPAIGN_ID>",
        f"  start a journey      {base}/clevertap/journeys/<MAILMODO_JOURNEY_ID>/start",
        f"  abort a journey      {base}/clevertap/journeys/<MAILMODO_JOURNEY_ID>/abort",
        f"  sync contacts        {base}/clevertap/lists/<MAILMODO_LIST_NAME>/contacts",
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
