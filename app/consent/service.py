"""Consent work done by the delivery workers, inside their own transactions:

* **claims**: Mailmodo triggers first, status reads only in what is left and within
  ``BRIDGE_RECONCILE_RATE_SHARE`` of the rate; a claimed consent call that would only echo
  back an opt-out the bridge carried (or repeat one it already carried) is finished unsent
  (``transitions.skip``) and logged;
* **outcomes** (in the transaction that records them): a delivered trigger or journey start
  books the contact's status reads; a delivered read teaches its state (``mapping``) once per
  change and queues the ``MM …`` event and the CleverTap opt-out; a delivered consent call
  records what was told to whom.

The worker calls four methods (``claim_mailmodo``, ``claim_clevertap``,
``on_mailmodo_outcomes``, ``on_clevertap_outcomes``); everything else is here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
import structlog
from sqlalchemy import Connection

from app.clevertap.bodies import map_activity
from app.clevertap.consent import consent_facts, consent_payload
from app.config import ConsentToCleverTap, Settings
from app.consent import repository as consent_repo
from app.consent.mapping import OPTED_OUT, ConsentStatus, event_activity, lesson
from app.consent.metrics import CHANGES_SENT, ECHOES, STATES_LEARNT, STATUS_READS
from app.mailmodo.status import ContactStatus
from app.outbox import claim_repository, repository, transitions
from app.outbox.models import Direction, Operation, State, Upstream
from app.outbox.schemas import Claimed, NewDelivery
from app.outbox.transitions import AttemptChange
from app.system import repository as system_repo
from app.upstream import AttemptOutcome, Outcome

log = structlog.get_logger(__name__)

Result = tuple[Claimed, Outcome, AttemptChange]

SENDS = frozenset({Operation.CAMPAIGN_TRIGGER.value, Operation.JOURNEY_START.value})
READ = Operation.CONTACT_STATUS.value
UNSUBSCRIBE = Operation.CONTACT_UNSUBSCRIBE.value
RESUBSCRIBE = Operation.CONTACT_RESUBSCRIBE.value
TO_CLEVERTAP = frozenset({Operation.CONSENT_PROFILE.value, Operation.CONSENT_SUBSCRIBE.value})
UNSUBSCRIBED = ConsentStatus.UNSUBSCRIBED.value

#: How far ahead one claim may book the reads' share of the rate: about a second of it, so a
#: trigger committed just after waits behind at most that (one read at the defaults).
READ_HORIZON_SECONDS = 1.0

SOURCE_READ = "mailmodo.read"
SOURCE_CALLBACK = "mailmodo.callback"
SOURCE_CLEVERTAP = "clevertap.webhook"


def consent_operation(mode: ConsentToCleverTap) -> Operation | None:
    """The CleverTap row an opt-out becomes in ``mode`` (None: ``off``)."""
    if mode is ConsentToCleverTap.PROFILE:
        return Operation.CONSENT_PROFILE
    if mode is ConsentToCleverTap.SUBSCRIBE_API:
        return Operation.CONSENT_SUBSCRIBE
    return None


def _when(at: datetime | None) -> str:
    return at.isoformat(timespec="seconds") if at else "an unknown time"


@dataclass(frozen=True, slots=True)
class Consent:
    """The consent rules of one worker, from the one ``Settings``."""

    schedule_seconds: tuple[int, ...]
    read_share: float
    rate_per_second: float
    to_clevertap: ConsentToCleverTap
    unresolved_identity: str
    park_ttl_hours: float
    max_event_properties: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Consent:
        return cls(
            schedule_seconds=tuple(round(h * 3600) for h in settings.reconcile_schedule_hours),
            read_share=settings.reconcile_rate_share,
            rate_per_second=settings.mailmodo_rate_per_second,
            to_clevertap=settings.consent_to_clevertap,
            unresolved_identity=settings.unresolved_identity.value,
            park_ttl_hours=settings.park_ttl_hours,
            max_event_properties=settings.clevertap_max_event_properties,
        )

    # -- claims ------------------------------------------------------------------------------

    def claim_mailmodo(
        self, conn: Connection, *, limit: int, now: datetime, lease_seconds: float, worker_id: str
    ) -> list[Claimed]:
        """Triggers first, reads within their share; echoing opt-outs finished unsent."""
        budget = f"{Upstream.MAILMODO.value}.reads"
        interval = 1.0 / (self.rate_per_second * self.read_share)
        epoch = now.timestamp()
        start = epoch

        def allowance(room: int) -> int:
            nonlocal start
            allowed, start = system_repo.share_allowance(
                conn, budget, now=epoch, interval=interval, horizon=READ_HORIZON_SECONDS
            )
            # Reads whose slot fell due become deliveries now, as many as may be claimed.
            self._take_up_due(conn, min(room, allowed), now)
            return allowed

        high, reads = claim_repository.claim_due_first(
            conn,
            upstream=Upstream.MAILMODO,
            limit=limit,
            now=now,
            lease_seconds=lease_seconds,
            worker_id=worker_id,
            low_priority=(READ,),
            low_allowance=allowance,
        )
        if reads:
            system_repo.push_rate_slot(conn, budget, not_before=start + len(reads) * interval)
        rows = high + reads
        return self._screen(conn, rows, now)

    def claim_clevertap(
        self, conn: Connection, *, limit: int, now: datetime, lease_seconds: float, worker_id: str
    ) -> list[Claimed]:
        rows = repository.claim_due(
            conn,
            upstream=Upstream.CLEVERTAP,
            limit=limit,
            now=now,
            lease_seconds=lease_seconds,
            worker_id=worker_id,
        )
        return self._screen(conn, rows, now)

    def _screen(self, conn: Connection, rows: list[Claimed], now: datetime) -> list[Claimed]:
        consent_rows = [
            r
            for r in rows
            if r.email and (r.operation == UNSUBSCRIBE or r.operation in TO_CLEVERTAP)
        ]
        if not consent_rows:
            return rows
        states = consent_repo.states_of(conn, (r.email or "" for r in consent_rows))
        skipped: set[int] = set()
        for row in consent_rows:
            why = self._needless(row, states.get(row.email or ""))
            if why is None:
                continue
            reason, echo = why
            if claim_repository.skip_leased(conn, row, transitions.skip(now, reason)):
                skipped.add(row.id)
                to_mailmodo = row.operation == UNSUBSCRIBE
                state, source = (
                    (UNSUBSCRIBED, SOURCE_CLEVERTAP) if to_mailmodo else consent_facts(row.payload)
                )
                consent_repo.add_log(
                    conn,
                    [
                        {
                            "email": row.email,
                            "at": now,
                            "state": state,
                            "source": source,
                            "reason": None,
                            "told": f"nobody: {reason}",
                            "echo": echo,
                            "delivery_id": row.id,
                        }
                    ],
                )
                if echo:
                    ECHOES.labels("to_mailmodo" if to_mailmodo else "to_clevertap").inc()
        return [r for r in rows if r.id not in skipped]

    @staticmethod
    def _needless(row: Claimed, state: consent_repo.Known | None) -> tuple[str, bool] | None:
        """Why a claimed opt-out call need not be made (and whether it is an echo)."""
        if state is None:
            return None
        if row.operation == UNSUBSCRIBE:
            if state.told_clevertap == UNSUBSCRIBED:
                return (
                    "echo of the opt-out the bridge carried into CleverTap at "
                    f"{_when(state.told_clevertap_at)}; not sent back to Mailmodo",
                    True,
                )
            if state.told_mailmodo == UNSUBSCRIBED:
                return (
                    "already unsubscribed in Mailmodo by the bridge at "
                    f"{_when(state.told_mailmodo_at)}",
                    False,
                )
            if state.mailmodo_state in OPTED_OUT:
                return f"Mailmodo already has this contact {state.mailmodo_state}", False
            return None
        if state.told_clevertap == UNSUBSCRIBED:
            return (
                f"already opted out in CleverTap by the bridge at {_when(state.told_clevertap_at)}",
                False,
            )
        _, source = consent_facts(row.payload)
        if source == SOURCE_CALLBACK and state.told_mailmodo == UNSUBSCRIBED:
            return (
                "echo of the opt-out the bridge carried into Mailmodo at "
                f"{_when(state.told_mailmodo_at)}; not sent back to CleverTap",
                True,
            )
        return None

    # -- outcomes: Mailmodo ------------------------------------------------------------------

    def on_mailmodo_outcomes(
        self, conn: Connection, results: Sequence[Result], now: datetime
    ) -> None:
        """Everything a batch of Mailmodo outcomes teaches, in the transaction recording it."""
        sends = [
            (row, change)
            for row, _, change in results
            if row.operation in SENDS and change.state is State.DELIVERED
        ]
        if sends and self.schedule_seconds:
            self._book_reads(conn, sends, now)
        for row, outcome, change in results:
            if row.operation == READ:
                self._read_done(conn, row, outcome, change, now)
            elif change.state is State.DELIVERED and row.email:
                if row.operation == UNSUBSCRIBE:
                    # What Mailmodo holds is ours now, not what a read last saw: the next read
                    # that sees it unsubscribed is this opt-out's echo, and one that sees it
                    # subscribed means the person opted in again since.
                    consent_repo.mark_told(
                        conn, row.email, now, told_mailmodo=UNSUBSCRIBED, mailmodo_state=None
                    )
                    self._log_told(conn, row, UNSUBSCRIBED, "mailmodo: unsubscribe", now)
                    CHANGES_SENT.labels("to_mailmodo", UNSUBSCRIBED).inc()
                elif row.operation == RESUBSCRIBE:
                    # CleverTap has the person subscribed again (its own webhook said so).
                    consent_repo.mark_told(
                        conn,
                        row.email,
                        now,
                        told_mailmodo="subscribed",
                        told_clevertap=None,
                        mailmodo_state="subscribed",
                    )
                    self._log_told(conn, row, "subscribed", "mailmodo: resubscribe", now)
                    CHANGES_SENT.labels("to_mailmodo", "subscribed").inc()

    def _log_told(
        self, conn: Connection, row: Claimed, state: str, what: str, now: datetime
    ) -> None:
        consent_repo.add_log(
            conn,
            [
                {
                    "email": row.email,
                    "at": now,
                    "state": state,
                    "source": SOURCE_CLEVERTAP,
                    "reason": None,
                    "told": f"{what} (delivery {row.id})",
                    "echo": False,
                    "delivery_id": row.id,
                }
            ],
        )

    def _book_reads(
        self, conn: Connection, sends: list[tuple[Claimed, AttemptChange]], now: datetime
    ) -> None:
        """One read per contact per slot: a send while a slot's read is still ahead adds none.
        Only the slot is written; its read becomes a delivery when due (``_take_up_due``)."""
        wanted: list[consent_repo.SlotBooking] = []
        seen: set[str] = set()
        for row, _ in sends:
            if not row.email or row.email in seen:
                continue
            seen.add(row.email)
            wanted.extend(
                consent_repo.SlotBooking(
                    email=row.email,
                    slot_seconds=slot,
                    due_at=now + timedelta(seconds=slot),
                    send_delivery_id=row.id,
                    send_operation=row.operation,
                    target=row.target,
                    clevertap_id=row.clevertap_id,
                    sent_at=now,
                )
                for slot in self.schedule_seconds
            )
        # In key order: two workers booking for the same contacts lock their rows in the same
        # order on PostgreSQL, so they never deadlock.
        wanted.sort(key=lambda w: (w.email, w.slot_seconds))
        consent_repo.book_slots(conn, wanted, now)

    def _take_up_due(self, conn: Connection, limit: int, now: datetime) -> None:
        """Make the reads of up to ``limit`` due slots outbox deliveries (due since their
        slot's time), in the claim's transaction: the claim that follows can take them."""
        due = consent_repo.due_slots(conn, now, limit)
        if not due:
            return
        news = []
        for slot in due:
            sent_at = slot.sent_at.isoformat() if slot.sent_at else None
            payload = {
                "email": slot.email,
                "slot_hours": slot.slot_seconds / 3600,
                "send": {
                    "delivery_id": slot.send_delivery_id,
                    "operation": slot.send_operation,
                    "target": slot.target,
                    "sent_at": sent_at,
                },
            }
            news.append(
                NewDelivery(
                    operation=Operation.CONTACT_STATUS,
                    upstream=Upstream.MAILMODO,
                    # Directions follow upstreams (the counts by direction rely on it).
                    direction=Direction.CLEVERTAP_TO_MAILMODO,
                    target=slot.target,
                    email=slot.email,
                    clevertap_id=slot.clevertap_id,
                    payload=orjson.dumps(payload).decode(),
                    next_attempt_at=slot.due_at,
                )
            )
        ids = claim_repository.add_deliveries(conn, news, now)
        consent_repo.set_slot_deliveries(
            conn, [(s.email, s.slot_seconds, i) for s, i in zip(due, ids, strict=True)]
        )

    def _read_done(
        self, conn: Connection, row: Claimed, outcome: Outcome, change: AttemptChange, now: datetime
    ) -> None:
        if change.state is not State.DELIVERED:
            if change.state is State.PENDING:
                STATUS_READS.labels("retry").inc()
            elif outcome.kind is AttemptOutcome.FAILED and (outcome.status_code or 0) < 300:
                STATUS_READS.labels("unclear").inc()
            else:
                STATUS_READS.labels("failed").inc()
            return
        status = ContactStatus.from_json(outcome.response_body)
        if status is None or not status.known or not row.email:
            STATUS_READS.labels("unknown").inc()
            return
        learnt = lesson(status)
        if not consent_repo.learn_mailmodo_state(
            conn, row.email, learnt.state.value, learnt.reason, now
        ):
            STATUS_READS.labels("unchanged").inc()
            return
        STATES_LEARNT.labels(learnt.state.value).inc()
        entry: dict[str, Any] = {
            "email": row.email,
            "at": now,
            "state": learnt.state.value,
            "source": SOURCE_READ,
            "reason": learnt.reason,
            "echo": False,
            "delivery_id": row.id,
        }
        if learnt.event is None:
            STATUS_READS.labels("learnt").inc()
            entry["told"] = "nobody: only an explicit /clevertap/consent/resubscribe resubscribes"
            consent_repo.add_log(conn, [entry])
            # Subscribed again since the bridge last carried an opt-out either way: the next
            # opt-out, from either side, is the person's own, not an echo of that one.
            consent_repo.mark_told(conn, row.email, now, told_mailmodo=None, told_clevertap=None)
            return
        state = consent_repo.state_of(conn, row.email)
        if state is not None and state.told_mailmodo == UNSUBSCRIBED:
            STATUS_READS.labels("echo").inc()
            ECHOES.labels("to_clevertap").inc()
            entry["echo"] = True
            entry["told"] = (
                "nobody: echo of the opt-out the bridge carried into Mailmodo at "
                f"{_when(state.told_mailmodo_at)}"
            )
            consent_repo.add_log(conn, [entry])
            return
        STATUS_READS.labels("learnt").inc()
        send = orjson.loads(row.payload).get("send") or {}
        activity = event_activity(
            learnt,
            email=row.email,
            clevertap_id=row.clevertap_id,
            ts=int(now.timestamp()),
            send=send,
        )
        news = [
            self._event_row(row, event.name, event.to_json(), now)
            for event in map_activity(
                activity,
                received_at_epoch=int(now.timestamp()),
                max_properties=self.max_event_properties,
            )
        ]
        told = [f"CleverTap: {news[0].target}"]
        operation = consent_operation(self.to_clevertap)
        already = state is not None and state.told_clevertap == UNSUBSCRIBED
        if operation is not None and not already:
            news.append(
                self.consent_row(
                    operation, row.email, row.clevertap_id, learnt.state.value, SOURCE_READ, now
                )
            )
        ids = claim_repository.add_deliveries(conn, news, now)
        told[0] += f" (delivery {ids[0]})"
        if len(ids) > 1:
            told.append(f"{self.to_clevertap.value} opt-out (delivery {ids[1]})")
            CHANGES_SENT.labels("to_clevertap", learnt.state.value).inc()
        elif already:
            told.append("no opt-out: already carried")
        entry["told"] = " + ".join(told)
        entry["delivery_id"] = ids[-1]
        consent_repo.add_log(conn, [entry])

    def _event_row(self, read: Claimed, name: str, payload: str, now: datetime) -> NewDelivery:
        return NewDelivery(
            operation=Operation.EVENT_UPLOAD,
            upstream=Upstream.CLEVERTAP,
            direction=Direction.MAILMODO_TO_CLEVERTAP,
            target=name,
            email=read.email,
            clevertap_id=read.clevertap_id,
            payload=payload,
            next_attempt_at=now,
            identity_policy=None if read.clevertap_id else self.unresolved_identity,
            park_until=now + timedelta(hours=self.park_ttl_hours),
        )

    def consent_row(
        self,
        operation: Operation,
        email: str,
        clevertap_id: str | None,
        state: str,
        source: str,
        now: datetime,
    ) -> NewDelivery:
        """An opt-out for CleverTap: a profile record (keyed like events) or a subscribe
        record (by address: it needs no CleverTap ID)."""
        by_address = operation is Operation.CONSENT_SUBSCRIBE
        return NewDelivery(
            operation=operation,
            upstream=Upstream.CLEVERTAP,
            direction=Direction.MAILMODO_TO_CLEVERTAP,
            target="MSG-email" if not by_address else "subscribe",
            email=email,
            clevertap_id=clevertap_id,
            payload=consent_payload(operation.value, email, state=state, source=source),
            next_attempt_at=now,
            identity_policy=None if (clevertap_id or by_address) else self.unresolved_identity,
            park_until=now + timedelta(hours=self.park_ttl_hours),
        )

    # -- outcomes: CleverTap -----------------------------------------------------------------

    def on_clevertap_outcomes(
        self, conn: Connection, results: Sequence[Result], now: datetime
    ) -> None:
        """A delivered opt-out: CleverTap was told (the echo guard's memory), logged once."""
        done = [
            row
            for row, _, change in results
            if row.operation in TO_CLEVERTAP and change.state is State.DELIVERED and row.email
        ]
        if not done:
            return
        logged = consent_repo.logged_deliveries(conn, (r.id for r in done))
        for row in done:
            email = row.email or ""
            state, source = consent_facts(row.payload)
            consent_repo.mark_told(conn, email, now, told_clevertap=UNSUBSCRIBED)
            if source == SOURCE_CALLBACK:
                # A callback taught Mailmodo's state: a later read of it is no news.
                consent_repo.learn_mailmodo_state(conn, email, state, None, now)
            if row.id not in logged:
                CHANGES_SENT.labels("to_clevertap", state).inc()
                consent_repo.add_log(
                    conn,
                    [
                        {
                            "email": email,
                            "at": now,
                            "state": state,
                            "source": source,
                            "reason": None,
                            "told": f"CleverTap: {row.operation} (delivery {row.id})",
                            "echo": False,
                            "delivery_id": row.id,
                        }
                    ],
                )
