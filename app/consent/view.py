"""What an operator sees of one person's consent: what the bridge knows and told, the consent
log, and the status reads scheduled or made (``GET /admin/consent/{email}``,
``ctmm-bridge consent EMAIL``)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime

from pydantic import BaseModel
from sqlalchemy.engine import Engine

from app.consent import repository as consent_repo
from app.db import read_only


class KnownState(BaseModel):
    mailmodo_state: str | None
    mailmodo_reason: str | None
    mailmodo_at: datetime | None
    told_mailmodo: str | None
    told_mailmodo_at: datetime | None
    told_clevertap: str | None
    told_clevertap_at: datetime | None
    updated_at: datetime


class LogEntry(BaseModel):
    at: datetime
    channel: str
    state: str
    source: str
    reason: str | None
    told: str
    echo: bool
    delivery_id: int | None


class StatusRead(BaseModel):
    #: None while the read is only scheduled in its slot (state ``scheduled``): it becomes an
    #: outbox delivery when it falls due.
    delivery_id: int | None
    state: str
    #: The campaign or journey of the send that booked it.
    target: str | None
    clevertap_id: str | None
    #: When it is (or was last) due.
    due_at: datetime
    attempts: int
    reason: str | None


class PersonConsent(BaseModel):
    email: str
    known: KnownState | None
    log: list[LogEntry]
    reads: list[StatusRead]


def person(engine: Engine, email: str) -> PersonConsent:
    email = email.strip().lower()
    with read_only(engine).connect() as conn:
        known = consent_repo.state_of(conn, email)
        log = consent_repo.log_of(conn, email)
        reads = consent_repo.reads_of(conn, email)
    state = None
    if known is not None:
        values = asdict(known)
        values.pop("email")
        state = KnownState(**values)
    return PersonConsent(
        email=email,
        known=state,
        log=[LogEntry(**{k: v for k, v in e.items() if k in LogEntry.model_fields}) for e in log],
        reads=[
            StatusRead(
                delivery_id=r["id"],
                state=str(r["state"].value if hasattr(r["state"], "value") else r["state"]),
                target=r["target"],
                clevertap_id=r["clevertap_id"],
                due_at=r["next_attempt_at"],
                attempts=r["attempts"],
                reason=r["reason"],
            )
            for r in reads
        ],
    )


def format_person(p: PersonConsent) -> str:
    """The text ``ctmm-bridge consent`` prints."""
    lines = [f"consent of {p.email}"]
    k = p.known
    if k is None:
        lines.append("  nothing known yet")
    else:
        lines.append(
            f"  Mailmodo: {k.mailmodo_state or '-'}"
            + (f" ({k.mailmodo_reason})" if k.mailmodo_reason else "")
        )
        lines.append(
            f"  told Mailmodo: {_told(k.told_mailmodo, k.told_mailmodo_at)}"
            f"   told CleverTap: {_told(k.told_clevertap, k.told_clevertap_at)}"
        )
    lines.append("log (newest first):")
    for e in p.log or []:
        echo = " [echo]" if e.echo else ""
        lines.append(
            f"  {e.at.isoformat(timespec='seconds')}  {e.state:<12} from {e.source:<18} "
            f"-> {e.told}{echo}"
        )
    if not p.log:
        lines.append("  (empty)")
    lines.append("status reads (latest due first):")
    for r in p.reads:
        ref = f"#{r.delivery_id}" if r.delivery_id is not None else "-"
        lines.append(
            f"  {ref}  {r.state:<9} due {r.due_at.isoformat(timespec='seconds')}  "
            f"after {r.target or '-'}" + (f"  ({r.reason})" if r.reason else "")
        )
    if not p.reads:
        lines.append("  (none)")
    return "\n".join(lines)


def _told(value: str | None, at: datetime | None) -> str:
    """What the bridge told one side that still stands; a value cleared since (Mailmodo has
    the person subscribed again, or an opt-in was carried) says so rather than "-"."""
    if value:
        return value
    return f"no opt-out standing since {at.isoformat(timespec='seconds')}" if at else "-"
