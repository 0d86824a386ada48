"""Mailmodo's settings block: the part of the one ``Settings`` this upstream reads."""

from __future__ import annotations

from dataclasses import dataclass

from app.config import Settings


@dataclass(frozen=True, slots=True)
class MailmodoConfig:
    api_key: str | None
    api_url: str
    timeout: float
    max_concurrency: int
    rate_per_second: float

    @classmethod
    def from_settings(cls, settings: Settings) -> MailmodoConfig:
        return cls(
            api_key=settings.mailmodo_api_key,
            api_url=settings.mailmodo_api_url,
            timeout=settings.mailmodo_timeout_seconds,
            max_concurrency=settings.mailmodo_max_concurrency,
            rate_per_second=settings.mailmodo_rate_per_second,
        )

    @property
    def configured(self) -> bool:
        """Without an API key calls are kept but none is sent."""
        return bool(self.api_key)

    @property
    def key(self) -> str:
        """What identifies the credentials: a change resumes a pause at once."""
        return self.api_key or ""
