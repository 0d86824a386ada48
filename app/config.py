"""The one place settings are read: environment variables prefixed ``BRIDGE_`` and ``.env``."""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CLEVERTAP_REGIONS: dict[str, str] = {
    "in1": "https://in1.api.clevertap.com",
    "sg1": "https://sg1.api.clevertap.com",
    "us1": "https://us1.api.clevertap.com",
    "aps3": "https://aps3.api.clevertap.com",
    "mec1": "https://mec1.api.clevertap.com",
    "eu1": "https://eu1.api.clevertap.com",
}

DEFAULT_RETRY_SCHEDULE = (5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 43200)


class UnresolvedIdentity(StrEnum):
    PARK = "park"
    EMAIL = "email"
    DROP = "drop"


class LogFormat(StrEnum):
    JSON = "json"
    CONSOLE = "console"


class IngestWriterMode(StrEnum):
    """Where inbound calls are committed: a child process (two cores: the API serves while
    the child commits) or a thread of the API process (one core, no extra process)."""

    PROCESS = "process"
    THREAD = "thread"


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CsvList = Annotated[list[str], NoDecode]
CsvSeconds = Annotated[list[float], NoDecode]


class Settings(BaseSettings):
    """All configuration of the bridge; names are fixed by the public interface."""

    model_config = SettingsConfigDict(
        env_prefix="BRIDGE_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    database_url: str = "sqlite:///./data/bridge.db"
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)

    clevertap_account_id: str | None = None
    clevertap_passcode: str | None = None
    clevertap_region: str = "us1"
    clevertap_api_url: str | None = None

    mailmodo_api_key: str | None = None
    mailmodo_api_url: str = "https://api.mailmodo.com"

    clevertap_webhook_secrets: CsvList = Field(default_factory=list)
    mailmodo_webhook_secrets: CsvList = Field(default_factory=list)
    admin_token: str | None = None

    embedded_worker: bool = True
    unresolved_identity: UnresolvedIdentity = UnresolvedIdentity.PARK
    retry_schedule_seconds: CsvSeconds = Field(
        default_factory=lambda: [float(s) for s in DEFAULT_RETRY_SCHEDULE]
    )
    dedup_window_seconds: int = Field(default=3600, ge=0)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)

    mailmodo_rate_per_second: float = Field(default=5.0, gt=0)
    mailmodo_max_concurrency: int = Field(default=10, ge=1, le=200)
    mailmodo_timeout_seconds: float = Field(default=15.0, gt=0)

    clevertap_max_concurrency: int = Field(default=5, ge=1, le=15)
    clevertap_batch_size: int = Field(default=1000, ge=1, le=1000)
    clevertap_max_event_properties: int = Field(default=100, ge=1, le=256)
    clevertap_timeout_seconds: float = Field(default=30.0, gt=0)
    clevertap_linger_ms: float = Field(default=250, ge=0, le=10_000)

    contact_tag_prefix: str = "ct_"
    contact_tags_field: str = "tags"
    park_ttl_hours: float = Field(default=72, gt=0)
    retention_days: float = Field(default=14, gt=0)
    log_format: LogFormat = LogFormat.JSON
    log_pii: bool = False
    log_level: str = "INFO"

    public_url: str | None = None
    lease_seconds: float = Field(default=300, ge=5)
    worker_poll_seconds: float = Field(default=1.0, gt=0)
    heartbeat_seconds: float = Field(default=10, gt=0)
    shutdown_grace_seconds: float = Field(default=10, ge=0)
    max_connections: int = Field(default=2048, ge=1)
    keep_alive_seconds: float = Field(default=5, gt=0)
    header_timeout_seconds: float = Field(default=10, gt=0)
    body_timeout_seconds: float = Field(default=30, gt=0)
    pause_probe_seconds: float = Field(default=60, gt=0)
    rejected_body_bytes: int = Field(default=16_384, ge=256)
    sqlite_synchronous: str = "FULL"
    ingest_writer: IngestWriterMode = IngestWriterMode.PROCESS

    @field_validator("clevertap_webhook_secrets", "mailmodo_webhook_secrets", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("retry_schedule_seconds", mode="before")
    @classmethod
    def _schedule(cls, value: object) -> object:
        value = _split_csv(value)
        if isinstance(value, list) and not value:
            raise ValueError("the retry schedule needs at least one delay")
        return value

    @field_validator("retry_schedule_seconds")
    @classmethod
    def _non_negative(cls, value: list[float]) -> list[float]:
        if any(delay < 0 for delay in value):
            raise ValueError("retry delays must not be negative")
        return value

    @field_validator("clevertap_region")
    @classmethod
    def _region(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in CLEVERTAP_REGIONS:
            raise ValueError(
                f"unknown region {value!r}; expected one of {sorted(CLEVERTAP_REGIONS)}"
            )
        return value

    @field_validator("sqlite_synchronous")
    @classmethod
    def _sync(cls, value: str) -> str:
        value = value.strip().upper()
        if value not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError("BRIDGE_SQLITE_SYNCHRONOUS must be OFF, NORMAL, FULL or EXTRA")
        return value

    @field_validator("database_url")
    @classmethod
    def _db_url(cls, value: str) -> str:
        # Plain postgres URLs use the psycopg 3 driver that ships with the bridge.
        for prefix in ("postgres://", "postgresql://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        return value

    @model_validator(mode="after")
    def _lease_outlasts_calls(self) -> Settings:
        # A worker only starts a call its lease will outlast (timeout + 5 s), so a lease
        # shorter than that would claim and release rows forever without sending them.
        longest = max(self.mailmodo_timeout_seconds, self.clevertap_timeout_seconds) + 5
        if self.lease_seconds <= longest:
            raise ValueError(
                f"BRIDGE_LEASE_SECONDS ({self.lease_seconds:g}) must be longer than the longest "
                f"upstream timeout plus 5 s ({longest:g})"
            )
        return self

    @property
    def clevertap_base_url(self) -> str:
        return (self.clevertap_api_url or CLEVERTAP_REGIONS[self.clevertap_region]).rstrip("/")

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()
