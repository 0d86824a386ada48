"""CleverTap's settings block: the part of the one ``Settings`` this upstream reads."""

from __future__ import annotations

from dataclasses import dataclass

from app.config import Settings


@dataclass(frozen=True, slots=True)
class CleverTapConfig:
    account_id: str | None
    passcode: str | None
    region: str
    api_url: str | None
    #: ``api_url`` when set, else the region's endpoint; no trailing slash.
    base_url: str
    timeout: float
    max_concurrency: int
    batch_size: int
    max_event_properties: int
    linger_ms: float

    @classmethod
    def from_settings(cls, settings: Settings) -> CleverTapConfig:
        return cls(
            account_id=settings.clevertap_account_id,
            passcode=settings.clevertap_passcode,
            region=settings.clevertap_region,
            api_url=settings.clevertap_api_url,
            base_url=settings.clevertap_base_url,
            timeout=settings.clevertap_timeout_seconds,
            max_concurrency=settings.clevertap_max_concurrency,
            batch_size=settings.clevertap_batch_size,
            max_event_properties=settings.clevertap_max_event_properties,
            linger_ms=settings.clevertap_linger_ms,
        )

    @property
    def configured(self) -> bool:
        """Without both the account id and the passcode, activity is kept but not uploaded."""
        return bool(self.account_id and self.passcode)

    @property
    def key(self) -> str:
        """What identifies the credentials: a new passcode, account or region resumes a
        pause at once."""
        return f"{self.account_id}:{self.passcode}:{self.base_url}"
