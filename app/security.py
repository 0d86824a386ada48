"""The credentials in force: configured ones, else generated once and kept in the database."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from app.clock import utcnow
from app.config import Settings
from app.logging import add_secrets
from app.system import repository


@dataclass(frozen=True, slots=True)
class Credentials:
    clevertap_secrets: tuple[str, ...]
    mailmodo_secrets: tuple[str, ...]
    admin_token: str
    #: Names of the credentials that were generated (not configured), to print at start.
    generated: frozenset[str] = field(default_factory=frozenset)


def new_secret() -> str:
    return secrets.token_urlsafe(24)


def fingerprint(value: str | None) -> str | None:
    """A short, non-reversible tag of a key, to notice that the operator changed it."""
    if not value:
        return None
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def load_credentials(engine: Engine, settings: Settings) -> Credentials:
    generated: set[str] = set()

    def stored(name: str) -> str:
        generated.add(name)
        with engine.begin() as conn:
            return repository.get_or_create_secret(conn, name, new_secret(), utcnow())

    clevertap = tuple(settings.clevertap_webhook_secrets) or (stored("clevertap_webhook_secret"),)
    mailmodo = tuple(settings.mailmodo_webhook_secrets) or (stored("mailmodo_webhook_secret"),)
    admin = settings.admin_token or stored("admin_token")
    add_secrets(*clevertap, *mailmodo, admin)
    return Credentials(clevertap, mailmodo, admin, frozenset(generated))
