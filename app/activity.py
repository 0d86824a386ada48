"""What Mailmodo said happened, independent of the payload shape it arrived in.

The neutral record between the two directions: ``app.mailmodo.source`` produces it from a
callback, ``app.clevertap.bodies`` turns it into CleverTap events. Neither side imports the
other. ``ts`` follows ``to_epoch_seconds``: epoch seconds, never 0, negative or in the
millisecond range (CleverTap rejects those), None when the payload gave no usable time.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from enum import StrEnum
from typing import Any

__all__ = ["Activity", "EventType", "to_epoch_seconds"]


class EventType(StrEnum):
    OPENED = "opened"
    CLICKED = "clicked"
    FORM_SUBMITTED = "form_submitted"
    BOUNCED = "bounced"
    UNSUBSCRIBED = "unsubscribed"
    SPAM = "spam"


@dataclass(slots=True, frozen=True)
class Activity:
    """One thing a recipient did. ``properties`` are snake_case (``campaign_name``,
    ``link_url``, ...); ``form_answers`` only for a form submission; ``dedup_id`` is the
    payload's own id of the event (``""`` when it has none); ``kind`` the shape it came in."""

    type: EventType
    email: str | None
    clevertap_id: str | None
    ts: int | None
    dedup_id: str
    properties: dict[str, Any] = field(default_factory=dict)
    form_answers: dict[str, Any] = field(default_factory=dict)
    kind: str = "activity"  # "activity" | "journey" | "form"


# --------------------------------------------------------------------------- time

_NUMERIC = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def to_epoch_seconds(value: Any) -> int | None:
    """Epoch seconds from seconds, ms, µs, ns, numeric strings, ``$D_`` dates or ISO 8601.

    CleverTap rejects ``ts = 0`` and milliseconds are undocumented there, so this never
    returns 0, a negative number or anything at or above 1e11 (the millisecond range):
    such inputs give None and the caller falls back to the time of receipt.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, date):
        return _date_seconds(value)
    if isinstance(value, int | float):
        return _seconds(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.startswith("$D_"):
        text = text[3:]
    if _NUMERIC.match(text):
        try:
            return _seconds(float(text) if any(c in text for c in ".eE") else int(text))
        except (OverflowError, ValueError):
            return None
    if not text or len(text) > 64 or not text[0].isdigit():
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        return None
    return _date_seconds(parsed)


def _date_seconds(value: date) -> int | None:
    """A date or datetime (naive = UTC) in seconds; never rescaled, as it has no unit."""
    if isinstance(value, datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=UTC)
    else:
        stamp = datetime.combine(value, time(), tzinfo=UTC)
    try:
        return _seconds(stamp.timestamp(), scale=False)
    except (OverflowError, OSError, ValueError):
        return None


def _seconds(number: float, *, scale: bool = True) -> int | None:
    """Scale ms/µs/ns down to seconds; None for 0, negatives and absurd values."""
    if isinstance(number, float) and not math.isfinite(number):
        return None
    if number <= 0:
        return None
    for _ in range(3 if scale else 0):
        if number < 1e11:
            break
        number = number / 1000 if isinstance(number, float) else number // 1000
    seconds = int(number)
    if seconds <= 0 or seconds >= 100_000_000_000:
        return None
    return seconds
