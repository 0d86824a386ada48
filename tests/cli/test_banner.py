"""The banner ``serve`` and ``ctmm-bridge credentials`` print: every webhook route a newcomer
must point CleverTap or Mailmodo at is in it, ready to paste."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from fastapi import FastAPI

from app.cli.banner import banner
from app.config import Settings
from app.security import Credentials


def _pattern(path: str) -> re.Pattern[str]:
    """A route's path with each ``{parameter}`` standing for any one path segment."""
    parts = re.split(r"\{[^}]+\}", path)
    return re.compile("^" + "[^/]+".join(re.escape(p) for p in parts) + "$")


def test_every_webhook_route_is_in_the_banner(app: FastAPI, settings: Settings) -> None:
    credentials = Credentials(
        clevertap_secrets=("ct-secret",), mailmodo_secrets=("mm-secret",), admin_token="admin"
    )
    text = banner(settings, credentials, reveal=True)
    shown = [urlsplit(url).path for url in re.findall(r"https?://\S+", text)]
    webhook_routes = [
        path
        for path, methods in app.openapi()["paths"].items()
        if path.startswith(("/clevertap/", "/mailmodo/")) and "post" in methods
    ]
    assert len(webhook_routes) >= 9  # seven CleverTap routes, two Mailmodo ones
    missing = [
        path for path in webhook_routes if not any(_pattern(path).match(url) for url in shown)
    ]
    assert missing == []


def test_the_banner_names_the_consent_webhooks(settings: Settings) -> None:
    credentials = Credentials(
        clevertap_secrets=("ct-secret",), mailmodo_secrets=("mm-secret",), admin_token="admin"
    )
    text = banner(settings, credentials)
    assert "/clevertap/consent/unsubscribe" in text
    assert "/clevertap/consent/resubscribe" in text
