"""Assembling a worker from the settings: ONE place, used by ``serve`` (the embedded worker),
``ctmm-bridge worker`` and the sandbox (through ``serve``'s app)."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from app.clevertap.client import CleverTapClient
from app.config import Settings
from app.consent.service import Consent
from app.mailmodo.client import MailmodoClient
from app.mailmojo.client import MailmojoClient
from app.outbox.policy import RetryPolicy
from app.security import fingerprint
from app.upstreams import CLEVERTAP, MAILMODO, MAILMOJO
from app.worker.consumer import ConsumerSettings
from app.worker.delivery import MailmodoDeliverer
from app.worker.mailmojo import RATE_NAME as MAILMOJO_RATE
from app.worker.mailmojo import MailmojoDeliverer
from app.worker.ratelimit import SharedRateLimiter
from app.worker.runner import WorkerRunner, new_worker_id
from app.worker.semaphore import build_upload_slots
from app.worker.upload import CleverTapUploader


def build_runner(
    engine: Engine,
    settings: Settings,
    *,
    worker_id: str | None = None,
    own_process: bool = False,
) -> WorkerRunner:
    """A runner with a consumer for each upstream whose credentials are configured.

    ``own_process``: the worker has a process to itself (``serve``'s child, ``ctmm-bridge
    worker``), so it keeps to ``BRIDGE_WORKER_INGEST_CPU_SHARE`` while ingest is busy (its
    process's CPU time is its own; in the API's process it is not)."""
    worker_id = worker_id or new_worker_id()
    runner = WorkerRunner(
        engine=engine,
        settings=settings,
        worker_id=worker_id,
        mailmodo=build_mailmodo_deliverer(engine, settings, worker_id),
        clevertap=build_clevertap_uploader(engine, settings, worker_id),
        mailmojo=build_mailmojo_deliverer(engine, settings, worker_id),
    )
    if own_process:
        runner.cpu_share = settings.worker_ingest_cpu_share
    return runner


def _consumer_settings(settings: Settings, worker_id: str, key: str) -> ConsumerSettings:
    return {
        "policy": RetryPolicy(
            settings.retry_schedule_seconds, pause_probe_seconds=settings.pause_probe_seconds
        ),
        "worker_id": worker_id,
        "lease_seconds": settings.lease_seconds,
        "key_fingerprint": fingerprint(key),
        "pause_probe_seconds": settings.pause_probe_seconds,
        "heartbeat_seconds": settings.heartbeat_seconds,
    }


def build_clevertap_uploader(
    engine: Engine, settings: Settings, worker_id: str, client: CleverTapClient | None = None
) -> CleverTapUploader | None:
    """None when the CleverTap project is not configured: events wait, readiness says why."""
    config = CLEVERTAP.settings(settings)
    if not CLEVERTAP.configured(config):
        return None
    return CleverTapUploader(
        engine=engine,
        client=client or CLEVERTAP.client(config),
        batch_size=config.batch_size,
        consent=Consent.from_settings(settings),
        slots=build_upload_slots(
            engine, config.account_id or "", settings.clevertap_max_concurrency
        ),
        # Wait for a slot no longer than the lease leaves for a whole upload after it.
        slot_wait_seconds=max(0.0, settings.lease_seconds - config.timeout - 5),
        # A new passcode, account or region resumes a pause at once.
        **_consumer_settings(settings, worker_id, config.key),
    )


def build_mailmodo_deliverer(
    engine: Engine, settings: Settings, worker_id: str, client: MailmodoClient | None = None
) -> MailmodoDeliverer | None:
    """None when no Mailmodo API key is configured: rows wait, readiness says why."""
    config = MAILMODO.settings(settings)
    if not MAILMODO.configured(config):
        return None
    return MailmodoDeliverer(
        engine=engine,
        client=client or MAILMODO.client(config),
        limiter=SharedRateLimiter(engine, "mailmodo", config.rate_per_second),
        consent=Consent.from_settings(settings),
        **_consumer_settings(settings, worker_id, config.key),
    )


def build_mailmojo_deliverer(
    engine: Engine, settings: Settings, worker_id: str, client: MailmojoClient | None = None
) -> MailmojoDeliverer | None:
    """None when no Mailmojo token is configured: contact syncs wait, readiness says why."""
    config = MAILMOJO.settings(settings)
    if not MAILMOJO.configured(config):
        return None
    return MailmojoDeliverer(
        engine=engine,
        client=client or MAILMOJO.client(config),
        limiter=SharedRateLimiter(engine, MAILMOJO_RATE, config.rate_per_second),
        **_consumer_settings(settings, worker_id, config.key),
    )
