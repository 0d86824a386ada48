"""The one place settings are read: environment variables prefixed ``BRIDGE_`` and ``.env``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

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


class ConsentToCleverTap(StrEnum):
    """What a Mailmodo opt-out does in CleverTap besides its ``MM …`` event."""

    PROFILE = "profile"
    SUBSCRIBE_API = "subscribe_api"
    OFF = "off"


class LogFormat(StrEnum):
    JSON = "json"
    CONSOLE = "console"


class IngestWriterMode(StrEnum):
    """Where inbound calls are committed: a child process (two cores: the API serves while
    the child commits) or a thread of the API process (one core, no extra process)."""

    PROCESS = "process"
    THREAD = "thread"


class EmbeddedWorkerMode(StrEnum):
    """Where ``serve``'s embedded worker runs: a child process at a lower CPU priority
    (delivering never slows ingest), or a task in the API's event loop (one process; tests)."""

    PROCESS = "process"
    TASK = "task"


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CsvList = Annotated[list[str], NoDecode]
CsvSeconds = Annotated[list[float], NoDecode]

ENV_PREFIX = "BRIDGE_"
#: Settings that may hold a credential: each also reads ``BRIDGE_<NAME>_FILE`` (a Docker or
#: Kubernetes secret mounted as a file), and none is ever echoed in a configuration error.
SECRET_SETTINGS = (
    "database_url",
    "mailmodo_api_key",
    "clevertap_passcode",
    "clevertap_webhook_secrets",
    "mailmodo_webhook_secrets",
    "admin_token",
)
#: The database URLs the bridge can open (the drivers it ships with).
SUPPORTED_DATABASES = ("sqlite", "postgresql+psycopg")


def env_name(field: str) -> str:
    """``clevertap_region`` -> ``BRIDGE_CLEVERTAP_REGION``: what an operator sets."""
    return ENV_PREFIX + field.upper()


class SettingsError(ValueError):
    """A configuration an operator must fix; its message is one line naming the variable."""


class SecretFiles(PydanticBaseSettingsSource):
    """``BRIDGE_<NAME>_FILE=/run/secrets/x``: the setting's value is the file's content
    (trailing newline removed), so secrets need not sit in the environment. Read from the
    environment, else from ``.env`` (``dotenv``'s variables), like every other setting."""

    def __init__(
        self, settings_cls: type[BaseSettings], dotenv: dict[str, str | None] | None = None
    ) -> None:
        super().__init__(settings_cls)
        #: The .env file's variables, by their names as written in the environment.
        self._dotenv = {k.upper(): v for k, v in (dotenv or {}).items()}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads every file at once

    def _file_of(self, name: str) -> str | None:
        """The file that holds setting ``name``, if one is named: the environment decides
        before .env, as for every setting (a value in the environment beats a file named in
        .env, a file named in the environment beats a value in .env); naming both the value
        and the file at one level is an error."""
        value, variable = env_name(name), env_name(name) + "_FILE"
        for level, found in (
            ("the environment", os.environ),
            (".env", self._dotenv),
        ):
            path, direct = found.get(variable), found.get(value)
            if path and direct:
                raise SettingsError(f"{variable}: set {value} or {variable}, not both ({level})")
            if path or direct:
                return path or None
        return None

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in SECRET_SETTINGS:
            variable = env_name(name) + "_FILE"
            path = self._file_of(name)
            if not path:
                continue
            try:
                values[name] = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise SettingsError(f"{variable}: cannot read {path}: {exc.strerror}") from None
        return values


class Settings(BaseSettings):
    """All configuration of the bridge; names are fixed by the public interface."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
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

    mailmojo_api_token: str | None = None
    mailmojo_api_url: str = "https://api.mailmojo.no"

    clevertap_webhook_secrets: CsvList = Field(default_factory=list)
    mailmodo_webhook_secrets: CsvList = Field(default_factory=list)
    admin_token: str | None = None

    embedded_worker: bool = True
    #: ``ctmm-bridge worker`` serves its own counters on this port (``/metrics``; 0: off): the
    #: deliveries it makes are counted in its memory, not on the API's ``/metrics``.
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)
    embedded_worker_mode: EmbeddedWorkerMode = EmbeddedWorkerMode.PROCESS
    unresolved_identity: UnresolvedIdentity = UnresolvedIdentity.PARK
    retry_schedule_seconds: CsvSeconds = Field(
        default_factory=lambda: [float(s) for s in DEFAULT_RETRY_SCHEDULE]
    )
    dedup_window_seconds: int = Field(default=3600, ge=0)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)

    mailmodo_rate_per_second: float = Field(default=5.0, gt=0)
    mailmodo_max_concurrency: int = Field(default=10, ge=1, le=200)
    mailmodo_timeout_seconds: float = Field(default=15.0, gt=0)

    # Mailmojo publishes no rate limit; each contact sync is two calls (read, then write).
    mailmojo_rate_per_second: float = Field(default=2.0, gt=0)
    mailmojo_max_concurrency: int = Field(default=4, ge=1, le=50)
    mailmojo_timeout_seconds: float = Field(default=15.0, gt=0)

    clevertap_max_concurrency: int = Field(default=5, ge=1, le=15)
    clevertap_batch_size: int = Field(default=1000, ge=1, le=1000)
    clevertap_max_event_properties: int = Field(default=100, ge=1, le=256)
    clevertap_timeout_seconds: float = Field(default=30.0, gt=0)
    clevertap_linger_ms: float = Field(default=250, ge=0, le=10_000)

    # Consent (app.consent): status reads after each trigger or journey start, and opt-outs
    # carried both ways. An empty schedule turns the reads off.
    reconcile_schedule_hours: CsvSeconds = Field(default_factory=lambda: [1.0, 24.0, 72.0])
    reconcile_rate_share: float = Field(default=0.2, gt=0, le=1)
    consent_to_clevertap: ConsentToCleverTap = ConsentToCleverTap.PROFILE

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
    #: While ingest is busy on the same SQLite database, the share of one core a worker's
    #: rounds and calls may take (``app.worker.runner``): even at ``SCHED_IDLE`` the worker's
    #: CPU slowed the API and the ingest writer on a 2-vCPU VM (bench/RESULTS.md, session 16).
    worker_ingest_cpu_share: float = Field(default=0.1, gt=0, le=1)
    heartbeat_seconds: float = Field(default=5, gt=0)
    shutdown_grace_seconds: float = Field(default=10, ge=0)
    max_connections: int = Field(default=2048, ge=1)
    keep_alive_seconds: float = Field(default=5, gt=0)
    header_timeout_seconds: float = Field(default=10, gt=0)
    body_timeout_seconds: float = Field(default=30, gt=0)
    pause_probe_seconds: float = Field(default=60, gt=0)
    # The outbox counts of /metrics, /admin/stats and the console (app.outbox.counts): recounted
    # off the request path when older than this; 0 counts on every read.
    counts_max_age_seconds: float = Field(default=10, ge=0, le=86_400)
    rejected_body_bytes: int = Field(default=16_384, ge=256)
    sqlite_synchronous: str = "FULL"
    ingest_writer: IngestWriterMode = IngestWriterMode.PROCESS

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # A secret file set in the environment beats a value in .env, like the environment.
        dotenv = getattr(dotenv_settings, "env_vars", None)
        return (
            init_settings,
            env_settings,
            SecretFiles(settings_cls, dict(dotenv) if isinstance(dotenv, Mapping) else None),
            dotenv_settings,
            file_secret_settings,
        )

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

    @field_validator("reconcile_schedule_hours", mode="before")
    @classmethod
    def _reconcile_csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("reconcile_schedule_hours")
    @classmethod
    def _reconcile_hours(cls, value: list[float]) -> list[float]:
        if any(not 0 < hours <= 24 * 365 for hours in value):
            raise ValueError("each read slot must be more than 0 and at most 8760 hours")
        # One read per slot: the same slot written twice is one slot.
        return sorted(set(value))

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
            raise ValueError("must be OFF, NORMAL, FULL or EXTRA")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        value = value.strip().upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is not None and value.strip() and "://" not in value:
            raise ValueError(
                "must start with https:// (or http://), e.g. https://bridge.example.com"
            )
        return value

    @field_validator("database_url")
    @classmethod
    def _db_url(cls, value: str) -> str:
        # Plain postgres URLs use the psycopg 3 driver that ships with the bridge.
        value = value.strip()
        for prefix in ("postgres://", "postgresql://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        scheme = value.split(":", 1)[0] if ":" in value else ""
        if scheme.split("+", 1)[0] != "sqlite" and scheme not in SUPPORTED_DATABASES:
            # Never echo the URL: it may hold a password.
            raise ValueError(
                f"unsupported database {scheme or 'URL'!r}; use sqlite:///path/to/bridge.db "
                "or postgresql://user:password@host:5432/database"
            )
        return value

    @model_validator(mode="after")
    def _lease_outlasts_calls(self) -> Settings:
        # A worker only starts a call its lease will outlast (timeout + 5 s), so a lease
        # shorter than that would claim and release rows forever without sending them.
        timeouts = [self.mailmodo_timeout_seconds, self.clevertap_timeout_seconds]
        if self.mailmojo_api_token:
            # Only counted when used: an operator without Mailmojo keeps a valid lease.
            timeouts.append(self.mailmojo_timeout_seconds)
        longest = max(timeouts) + 5
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


def describe_error(exc: ValidationError) -> str:
    """One line naming each bad ``BRIDGE_*`` variable and what is wrong, never its value."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        field = next((str(part) for part in error["loc"] if isinstance(part, str)), None)
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{env_name(field)}: {message}" if field else message)
    return "; ".join(parts)


@lru_cache
def get_settings() -> Settings:
    """The settings; a bad value raises ``SettingsError`` with a one-line message."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(describe_error(exc)) from None
