"""Readiness: can this process take calls and will they be delivered?"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import text

from app.clock import utcnow
from app.db import read_only
from app.outbox import repository
from app.outbox.models import Upstream
from app.state import BridgeState
from app.system import repository as system_repo
from app.system.migrations import current_revision, head_revision


def _writes_again(state: BridgeState) -> bool:
    """After the writer failed to commit: does a real write go through now? (Nothing else
    would tell: while readiness fails, no call arrives to try again.)"""
    try:
        with state.engine.begin() as conn:
            system_repo.write_probe(conn, utcnow())
    except Exception:
        return False
    state.writer.health.recovered()
    return True


def readiness(state: BridgeState) -> tuple[bool, dict[str, Any]]:
    """Each check with its verdict; ready only when every one passes."""
    settings = state.settings
    checks: dict[str, dict[str, Any]] = {}
    engine = read_only(state.engine)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = {"ok": True}
    except Exception as exc:
        checks["database"] = {"ok": False, "error": type(exc).__name__}
        return False, checks

    checks["writer"] = {"ok": state.writer.up, "mode": settings.ingest_writer.value}
    if not state.writer.up:
        checks["writer"]["hint"] = "the ingest writer is restarting; calls get 503 until it is up"
        return False, checks
    if state.writer.health.error is not None and not _writes_again(state):
        checks["writer"] |= {
            "ok": False,
            "error": state.writer.health.error,
            "hint": "the ingest writer cannot commit (disk full? database gone?); "
            "calls get 503 until it can",
        }
        return False, checks

    current, head = current_revision(engine), head_revision()
    checks["migrations"] = {"ok": current == head, "current": current, "head": head}
    if current != head:
        checks["migrations"]["hint"] = "run `ctmm-bridge db upgrade`"
        return False, checks

    with engine.connect() as conn:
        beat = system_repo.latest_beat(conn)
        upstreams = system_repo.upstream_states(conn)
    now = utcnow()
    stale_after = timedelta(seconds=max(3 * settings.heartbeat_seconds, 30))
    fresh = beat is not None and now - beat <= stale_after
    checks["worker"] = {
        "ok": fresh,
        "last_heartbeat": beat.isoformat() if beat else None,
        "embedded": settings.embedded_worker,
    }
    if getattr(state.runner, "up", None) is False:  # the embedded worker's child process
        checks["worker"] |= {"ok": False, "process": "down"}
        checks["worker"]["hint"] = "the embedded worker process is starting or restarting"
    elif not fresh:
        checks["worker"]["hint"] = (
            "no worker has reported recently; start `ctmm-bridge worker`"
            if not settings.embedded_worker
            else "the embedded worker is not beating"
        )

    with engine.connect() as conn:
        waiting = {u: repository.has_waiting(conn, u) for u in Upstream}
    # An unconfigured upstream only matters once something is waiting for it.
    mailmodo: dict[str, Any] = {"ok": True, "configured": bool(settings.mailmodo_api_key)}
    if not settings.mailmodo_api_key:
        mailmodo["hint"] = "set BRIDGE_MAILMODO_API_KEY; calls are kept until then"
        mailmodo["ok"] = not waiting[Upstream.MAILMODO]
    mailmodo |= _pause(upstreams.get("mailmodo"), Upstream.MAILMODO)
    checks["mailmodo"] = mailmodo
    ct_configured = bool(settings.clevertap_account_id and settings.clevertap_passcode)
    clevertap: dict[str, Any] = {
        "ok": ct_configured or not waiting[Upstream.CLEVERTAP],
        "configured": ct_configured,
    }
    if not ct_configured:
        clevertap["hint"] = (
            "set BRIDGE_CLEVERTAP_ACCOUNT_ID and BRIDGE_CLEVERTAP_PASSCODE; events are kept "
            "until then"
        )
    clevertap |= _pause(upstreams.get("clevertap"), Upstream.CLEVERTAP)
    checks["clevertap"] = clevertap
    checks["mailmojo"] = _optional_upstream(
        configured=bool(settings.mailmojo_api_token),
        waiting=waiting[Upstream.MAILMOJO],
        hint="set BRIDGE_MAILMOJO_API_TOKEN; contact syncs are kept until then",
        paused=upstreams.get(Upstream.MAILMOJO.value),
    )
    return all(c["ok"] for c in checks.values()), checks


def _optional_upstream(
    *, configured: bool, waiting: bool, hint: str, paused: Any
) -> dict[str, Any]:
    """An upstream only some set-ups use: without credentials it matters only once something
    waits for it; a pause (credentials rejected) always does."""
    check: dict[str, Any] = {"ok": configured or not waiting, "configured": configured}
    if not configured:
        check["hint"] = hint
    return check | _pause(paused, Upstream.MAILMOJO)


def _pause(paused: Any, upstream: Upstream) -> dict[str, Any]:
    """What a readiness check says of an upstream paused for its credentials: why, since
    when, and what to do."""
    if paused is None or not paused.paused:
        return {}
    return {
        "ok": False,
        "paused": True,
        "reason": paused.reason,
        "paused_since": paused.paused_at.isoformat() if paused.paused_at else None,
        "hint": f"fix the {upstream.value} credentials; deliveries resume at the next probe "
        f"that they pass, or at once with `ctmm-bridge resume {upstream.value}`",
    }
