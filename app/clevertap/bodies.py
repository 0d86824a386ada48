"""What we send CleverTap: a neutral ``Activity`` as custom events its ``/1/upload`` API will
accept, and the stored event record (``CleverTapEvent``) each upload delivery carries.

Event names follow Mailmodo's own CleverTap integration (``MM Email Opened``, ...), so
segments built on that integration keep working. Property names are human-readable labels:
the documented Segment keys get fixed labels (``campaign_name`` -> ``Campaign Name``,
``email_subject`` -> ``Subject``, ``link_url`` -> ``Link URL``), any other snake_case key is
title-cased (``foo_bar`` -> ``Foo Bar``) and other keys are kept as given.

CleverTap skips a whole record for a bad name, too many properties or a bad ``ts``, so every
record is made valid here rather than rejected: forbidden characters
(``% > < ! | & . : ; $ ' " \\``) are removed from names, names are at most 120 characters,
values at most 512 characters and 512 UTF-8 bytes, lists are joined with ``", "``, nested
objects are flattened with spaces (``{"address": {"city": ..}}`` -> ``Address City``), and at
most ``max_properties`` properties are kept, the documented ones first.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

import orjson

from app.activity import Activity, EventType, to_epoch_seconds
from app.caching import text_cache

__all__ = [
    "EVENT_NAMES",
    "FORBIDDEN",
    "PROPERTY_LABELS",
    "CleverTapEvent",
    "build_event_data",
    "flatten",
    "map_activity",
    "property_label",
    "sanitize_name",
    "sanitize_value",
    "to_epoch_seconds",
    "upload_record",
    "upload_record_for",
]

Scalar = str | int | float | bool

#: Characters CleverTap forbids in event and property names.
FORBIDDEN = set("%><!|&.:;$'\"\\")
MAX_NAME_LEN = 120
MAX_VALUE_LEN = 512
FORM_ANSWERS_PREFIX = "MM "
FORM_ANSWERS_SUFFIX = " Form Submitted"

EVENT_NAMES: dict[EventType, str] = {
    EventType.OPENED: "MM Email Opened",
    EventType.CLICKED: "MM Email Link Clicked",
    EventType.FORM_SUBMITTED: "MM Email Form Submitted",
    EventType.BOUNCED: "MM Email Bounced",
    EventType.UNSUBSCRIBED: "MM Email Unsubscribed",
    EventType.SPAM: "MM Email Marked as Spam",
}

#: Labels of the documented properties; this order is also the order they are kept in.
PROPERTY_LABELS: dict[str, str] = {
    "campaign_name": "Campaign Name",
    "campaign_id": "Campaign ID",
    "campaign_type": "Campaign Type",
    "email_subject": "Subject",
    "email_type": "Email Type",
    "template_name": "Template Name",
    "template_id": "Template ID",
    "link_url": "Link URL",
    "link_id": "Link ID",
    "form_id": "Form ID",
    "form_name": "Form Name",
    "submission_type": "Submission Type",
    "response_id": "Response ID",
    "answer_count": "Answer Count",
    "reason": "Reason",
    "is_hard_bounce": "Hard Bounce",
    "apple_privacy_open": "Apple Privacy Open",
    "journey_id": "Journey ID",
    "user_id": "Mailmodo Contact ID",
    "trigger_source": "Trigger Source",
    "campaign_trigger_source": "Campaign Trigger Source",
    "email_ref": "Email Ref",
    "email_id": "Email ID",
}
_ACRONYMS = {"id": "ID", "url": "URL", "utm": "UTM", "amp": "AMP", "html": "HTML", "api": "API"}
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})
_MAX_DEPTH = 16


@dataclass(slots=True, frozen=True)
class CleverTapEvent:
    """One CleverTap event as stored in an upload delivery's payload.

    Stored as ``{"evtName": ..., "evtData": ..., "ts": ...}`` (the upload record's own keys),
    the shape every stored row has had, so rows written by any version load.
    """

    name: str
    data: dict[str, Any]
    ts: int

    def to_json(self) -> str:
        return orjson.dumps({"evtName": self.name, "evtData": self.data, "ts": self.ts}).decode()

    @classmethod
    def from_json(cls, payload: str | bytes) -> CleverTapEvent:
        stored = orjson.loads(payload)
        return cls(stored["evtName"], stored["evtData"], stored["ts"])


# --------------------------------------------------------------------------- names


@text_cache(maxsize=4096)
def _clean_name(name: str, max_len: int) -> str:
    """Forbidden and control characters removed, whitespace collapsed, cut; may be empty.

    Cached: property and event names repeat across events, and this walks every character.
    """
    cleaned = "".join(
        " " if ch.isspace() else ch
        for ch in name
        if ch not in FORBIDDEN
        and (ch.isspace() or unicodedata.category(ch) not in _DROPPED_CATEGORIES)
    )
    return " ".join(cleaned.split())[: max(1, max_len)].rstrip()


def sanitize_name(name: str, max_len: int = MAX_NAME_LEN, *, fallback: str = "Property") -> str:
    """A name CleverTap accepts: no forbidden or control characters, single spaces, never empty."""
    return (
        _clean_name(str(name), max_len)
        or _clean_name(str(fallback), max_len)
        or "Property"[: max(1, max_len)]
    )


def property_label(key: str) -> str:
    """The readable name of a property key (see module doc)."""
    key = str(key)
    label = PROPERTY_LABELS.get(key)
    if label is not None:
        return label
    words = key.split("_")
    if key and key == key.lower() and all(w.isalnum() for w in words if w) and any(words):
        return " ".join(_ACRONYMS.get(w, w[:1].upper() + w[1:]) for w in words if w)
    return key


# --------------------------------------------------------------------------- values


def _truncate(text: str, max_len: int) -> str:
    """At most ``max_len`` characters and UTF-8 bytes, never splitting a character."""
    encoded = text[:max_len].encode("utf-8", "replace")  # lone surrogates become "?"
    return encoded[:max_len].decode("utf-8", "ignore")


def _date_value(value: date) -> str:
    """CleverTap's date form ``$D_<epoch s>``; ISO text for dates it cannot represent."""
    if isinstance(value, datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=UTC)
    else:
        stamp = datetime.combine(value, time(), tzinfo=UTC)
    seconds = to_epoch_seconds(stamp)
    return f"$D_{seconds}" if seconds is not None else stamp.isoformat()


def _as_text(value: Any, depth: int = 0) -> str | None:
    """One element of a joined list as text (None is left out)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list | tuple | set | frozenset) and depth < _MAX_DEPTH:
        parts = (_as_text(v, depth + 1) for v in value)
        return ", ".join(p for p in parts if p is not None)
    if isinstance(value, dict):
        try:
            return json.dumps(value, ensure_ascii=False, default=str)
        except RecursionError:
            return "{...}"
        except (TypeError, ValueError):
            return str(value)
    return str(value)


def sanitize_value(value: Any, max_len: int = MAX_VALUE_LEN) -> Scalar:
    """A scalar CleverTap accepts: strings cut to ``max_len`` chars and bytes, lists joined."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        # Beyond 64 bits JSON readers disagree, so such numbers travel as text.
        return value if -(2**63) <= value < 2**63 else _truncate(str(value), max_len)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, date):
        return _truncate(_date_value(value), max_len)
    if isinstance(value, str):
        return _truncate(value, max_len)
    return _truncate(_as_text(value) or "", max_len)


# --------------------------------------------------------------------------- event data


def _flatten_items(
    props: dict[Any, Any], parent: str, label: Callable[[str], str] | None, depth: int = 0
) -> Iterator[tuple[str, Any]]:
    for key, value in props.items():
        part = label(str(key)) if label is not None else str(key)
        name = f"{parent} {part}" if parent else part
        if isinstance(value, dict) and depth < _MAX_DEPTH:
            yield from _flatten_items(value, name, label, depth + 1)
        else:
            yield name, value


def flatten(
    props: dict[Any, Any], parent: str = "", *, label: Callable[[str], str] | None = None
) -> dict[str, Any]:
    """Nested objects as one level, keys joined by spaces: ``{"a": {"b": 1}}`` -> ``{"a b": 1}``.

    ``label`` renames every key segment first; on a clash the first key wins.
    """
    out: dict[str, Any] = {}
    for name, value in _flatten_items(props, parent, label):
        out.setdefault(name, value)
    return out


def _fold(name: str) -> str:
    """Names CleverTap may treat as the same (case and spaces ignored) fold to one key."""
    return "".join(name.casefold().split())


class _EventData:
    """Collects sanitised properties, renaming clashes (``Name``, ``Name 2``) up to a cap."""

    def __init__(self, max_properties: int) -> None:
        self.data: dict[str, Scalar] = {}
        self._seen: set[str] = set()
        self._max = max(0, max_properties)

    def full(self) -> bool:
        return len(self.data) >= self._max

    def add(self, name: str, value: Any) -> None:
        if value is None or self.full():
            return
        base = sanitize_name(name)
        key, number = base, 1
        while _fold(key) in self._seen:
            number += 1
            suffix = f" {number}"
            key = base[: MAX_NAME_LEN - len(suffix)].rstrip() + suffix
        self._seen.add(_fold(key))
        self.data[key] = sanitize_value(value)

    def add_all(self, props: dict[Any, Any], label: Callable[[str], str] | None) -> None:
        for name, value in _flatten_items(props, "", label):
            if self.full():
                return
            self.add(name, value)


def _known_first(props: dict[Any, Any]) -> dict[Any, Any]:
    ordered = {key: props[key] for key in PROPERTY_LABELS if key in props}
    ordered.update((key, value) for key, value in props.items() if key not in ordered)
    return ordered


def build_event_data(props: dict[Any, Any], *, max_properties: int) -> dict[str, Scalar]:
    """CleverTap ``evtData``: labelled, flattened, sanitised, de-duplicated and capped."""
    out = _EventData(max_properties)
    out.add_all(_known_first(props), property_label)
    return out.data


# --------------------------------------------------------------------------- mapping


def _answers_event_name(properties: dict[str, Any]) -> str:
    """``MM <Template Name> Form Submitted``; template, else campaign name, else form id."""
    room = MAX_NAME_LEN - len(FORM_ANSWERS_PREFIX) - len(FORM_ANSWERS_SUFFIX)
    source = "Unknown"
    for key in ("template_name", "campaign_name", "form_id"):
        value = properties.get(key)
        if value is None or isinstance(value, dict | list | bool):
            continue
        cleaned = _clean_name(str(value), room)
        if cleaned:
            source = cleaned
            break
    return f"{FORM_ANSWERS_PREFIX}{source}{FORM_ANSWERS_SUFFIX}"


def map_activity(
    event: Activity, *, received_at_epoch: int, max_properties: int = 100
) -> list[CleverTapEvent]:
    """The CleverTap events for one activity: one, or two for a form submission.

    A form submission gives ``MM Email Form Submitted`` (a summary with ``Answer Count``, so
    one event covers every form) and ``MM <Template Name> Form Submitted`` with the answers,
    as Mailmodo's own CleverTap integration does.
    """
    ts = to_epoch_seconds(event.ts) or to_epoch_seconds(received_at_epoch)
    if ts is None:
        raise ValueError(f"received_at_epoch must be a positive epoch time: {received_at_epoch!r}")
    name = EVENT_NAMES[event.type]
    if event.type is not EventType.FORM_SUBMITTED:
        data = build_event_data(event.properties, max_properties=max_properties)
        return [CleverTapEvent(name, data, ts)]

    summary_props = dict(event.properties)
    summary_props["answer_count"] = sum(
        1 for value in event.form_answers.values() if value not in (None, "", [], {})
    )
    summary = CleverTapEvent(
        name, build_event_data(summary_props, max_properties=max_properties), ts
    )
    # Answers first, under their own (sanitised) names; then context while there is room.
    answers = _EventData(max_properties)
    answers.add_all(event.form_answers, None)
    context = {
        key: event.properties[key]
        for key in ("form_id", "response_id", "campaign_name", "template_name")
        if key in event.properties
    }
    answers.add_all(context, property_label)
    detail = CleverTapEvent(_answers_event_name(event.properties), answers.data, ts)
    return [summary, detail]


def upload_record(
    event: CleverTapEvent, *, object_id: str | None = None, identity: str | None = None
) -> dict[str, Any]:
    """One ``/1/upload`` record, addressed by exactly one of ``objectId`` or ``identity``."""
    object_id = object_id.strip() if object_id else None
    identity = identity.strip() if identity else None
    if bool(object_id) == bool(identity):
        raise ValueError("exactly one of object_id or identity is required")
    record: dict[str, Any] = {
        "type": "event",
        "evtName": event.name,
        "evtData": dict(event.data),
        "ts": event.ts,
    }
    if object_id:
        record["objectId"] = object_id
    else:
        record["identity"] = identity
    return record


def upload_record_for(
    payload: str, *, clevertap_id: str | None, email: str | None
) -> dict[str, Any] | None:
    """The upload record of a stored event, keyed by ``objectId``, else ``identity`` = email;
    None when the delivery has neither."""
    if not (clevertap_id or email):
        return None
    return upload_record(
        CleverTapEvent.from_json(payload),
        object_id=clevertap_id,
        identity=None if clevertap_id else email,
    )
