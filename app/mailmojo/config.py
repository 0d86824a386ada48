"""Mailmojo's settings block: the part of the one ``Settings`` this upstream reads."""

from __future__ import annotations

from dataclasses import dataclass

from app.config import Settings


@dataclass(frozen=True, slots=True)
class MailmojoConfig:
    api_token: str | None
    api_url: str
    timeout: float
    max_concurrency: int
    rate_per_second: float

    @classmethod
    def from_settings(cls, settings: Settings) -> MailmojoConfig:
        return cls(
            api_token=settings.mailmojo_api_token,
            api_url=settings.mailmojo_api_url,
            timeout=settings.mailmojo_timeout_seconds,
            max_concurrency=settings.mailmojo_max_concurrency,
            rate_per_second=settings.mailmojo_rate_per_second,
        )

    @property
    def configured(self) -> bool:
        """Without a token contact syncs are kept but none is sent."""
        return bool(self.api_token)

    @property
    def key(self) -> str:
        """What identifies the credentials: a new token (or URL) resumes a pause at once."""
        return f"{self.api_token or ''}:{self.api_url.rstrip('/')}"
