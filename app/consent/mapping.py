"""What a status read teaches: the contact's consent state and the ``MM …`` event it means.

=========================================================  ============  =======================
Mailmodo says                                              state         event
=========================================================  ============  =======================
``blocked: true``, reason mentions a bounce                ``bounced``   MM Email Bounced
                                                                         (``Hard Bounce`` true)
``blocked: true``, reason mentions spam or a complaint     ``spam``      MM Email Marked as Spam
``unsubscribed: true``                                     ``unsubscribed``  MM Email Unsubscribed
                                                                         (reason, email types)
``blocked: true``, any other reason                        ``blocked``   MM Email Unsubscribed
                                                                         (the block's reason)
neither                                                    ``subscribed``  none
=========================================================  ============  =======================

Bounces and spam come first: Mailmodo's reasons are free text (the exact words are not
documented), so they are classified by words and the raw reason always travels along.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from app.activity import Activity, EventType
from app.mailmodo.status import ContactStatus


class ConsentStatus(StrEnum):
    SUBSCRIBED = "subscribed"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    SPAM = "spam"
    BLOCKED = "blocked"


#: The states in which Mailmodo no longer mails the person: the ones carried to CleverTap.
OPTED_OUT = frozenset(
    {ConsentStatus.UNSUBSCRIBED, ConsentStatus.BOUNCED, ConsentStatus.SPAM, ConsentStatus.BLOCKED}
)
_BOUNCE = re.compile(r"bounc", re.IGNORECASE)
_SPAM = re.compile(r"spam|complain|abuse", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Lesson:
    """A read's state, the raw reason, and the event it means (None for ``subscribed``)."""

    state: ConsentStatus
    reason: str | None
    event: EventType | None
    properties: dict[str, Any]


def lesson(status: ContactStatus) -> Lesson:
    """The mapping table of the module doc."""
    blocked_reason = status.blocked_reason or ""
    if status.blocked and _BOUNCE.search(blocked_reason):
        return Lesson(
            ConsentStatus.BOUNCED,
            status.blocked_reason,
            EventType.BOUNCED,
            {"reason": status.blocked_reason, "is_hard_bounce": True},
        )
    if status.blocked and _SPAM.search(blocked_reason):
        return Lesson(
            ConsentStatus.SPAM,
            status.blocked_reason,
            EventType.SPAM,
            {"reason": status.blocked_reason},
        )
    if status.unsubscribed:
        props: dict[str, Any] = {"reason": status.unsubscribe_reason}
        if status.unsubscribed_email_types:
            props["unsubscribed_email_types"] = list(status.unsubscribed_email_types)
        return Lesson(
            ConsentStatus.UNSUBSCRIBED, status.unsubscribe_reason, EventType.UNSUBSCRIBED, props
        )
    if status.blocked:
        return Lesson(
            ConsentStatus.BLOCKED,
            status.blocked_reason,
            EventType.UNSUBSCRIBED,
            {"reason": status.blocked_reason or "blocked"},
        )
    return Lesson(ConsentStatus.SUBSCRIBED, None, None, {})


def event_activity(
    learnt: Lesson,
    *,
    email: str,
    clevertap_id: str | None,
    ts: int,
    send: dict[str, Any],
) -> Activity:
    """The activity a learnt opt-out reports, with the campaign or journey of the send that
    scheduled the read (``send``: its operation and target)."""
    assert learnt.event is not None
    props = {k: v for k, v in learnt.properties.items() if v is not None}
    target = send.get("target")
    if send.get("operation") == "journey.start":
        props["journey_id"] = target
    elif target:
        props["campaign_id"] = target
    props["detected_by"] = "status read"
    return Activity(
        type=learnt.event,
        email=email,
        clevertap_id=clevertap_id,
        ts=ts,
        dedup_id="",
        properties=props,
    )


def callback_opt_out(activity: Activity) -> ConsentStatus | None:
    """Whether a Mailmodo callback reports an opt-out CleverTap should honour: an
    unsubscribe, a spam report or a hard bounce (a soft bounce is not an opt-out)."""
    if activity.type is EventType.UNSUBSCRIBED:
        return ConsentStatus.UNSUBSCRIBED
    if activity.type is EventType.SPAM:
        return ConsentStatus.SPAM
    if activity.type is EventType.BOUNCED and _truthy(activity.properties.get("is_hard_bounce")):
        return ConsentStatus.BOUNCED
    return None


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"true", "yes", "1", "hard"}
    return value is True or value == 1
