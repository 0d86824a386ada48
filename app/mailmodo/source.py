"""Mailmodo as a source: its callbacks read tolerantly and turned into neutral ``Activity``
records (``app.activity``).

Mailmodo documents no generic activity webhook, so three shapes reach the bridge (see the
README and ``mailmodo.md`` §5):

* **Activity event**: the bridge's own shape. A top-level ``event`` (``opened``,
  ``Email Opened``, ``MM Email Opened``, ...), ``email``, ``clevertap_id``, ``timestamp``,
  ``event_id`` and Segment-style properties, flat or nested under ``properties``, in snake_case
  or camelCase. A JSON array of such objects is accepted too.
* **Journey webhook card**: the ``triggerData`` envelope. The body carries no event type, so it
  comes from the URL (``/events/opened``); with ``formSubmissionData`` and no URL event it is a
  form submission.
* **Form-submission webhook**: the flat object with ``responseId``, ``recipientEmail``,
  ``formId``, ``recordedAt.ts`` and one key per answer.

Nothing here does I/O: the inbound line stores the call, this module says what it means, and
``app.clevertap.bodies`` maps the activity to CleverTap records.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from app.activity import Activity, EventType, to_epoch_seconds
from app.caching import text_cache
from app.identity.schemas import clean_clevertap_id, valid_email

__all__ = ["CallbackError", "normalise_event_type", "parse_callback", "snake_key"]


class CallbackError(ValueError):
    """Valid JSON that is not a callback the bridge understands (answered 422, call kept)."""

    def __init__(self, message: str, detail: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


# --------------------------------------------------------------------------- event names

# Names are compared after lower-casing, dropping everything but letters and digits, and
# dropping a leading "mm" and then "email" (Mailmodo's CleverTap names are "MM Email ...",
# Segment's are "Email ..."), so "MM Email Opened", "email_opened" and "Opened" all meet here.
_EVENT_ALIASES: dict[str, EventType] = {
    **dict.fromkeys(("opened", "open", "opens", "emailopen"), EventType.OPENED),
    **dict.fromkeys(
        ("clicked", "click", "clicks", "linkclicked", "linkclick", "emaillinkclicked"),
        EventType.CLICKED,
    ),
    **dict.fromkeys(
        (
            "formsubmitted",
            "formsubmit",
            "formsubmission",
            "formsubmissions",
            "formresponse",
            "submitted",
            "submission",
        ),
        EventType.FORM_SUBMITTED,
    ),
    **dict.fromkeys(
        ("bounced", "bounce", "bounces", "hardbounce", "softbounce"), EventType.BOUNCED
    ),
    **dict.fromkeys(
        ("unsubscribed", "unsubscribe", "unsubscribes", "unsub", "optout", "optedout"),
        EventType.UNSUBSCRIBED,
    ),
    **dict.fromkeys(
        (
            "spam",
            "markedasspam",
            "markedspam",
            "markasspam",
            "spamreport",
            "spamreported",
            "reportedasspam",
            "spamcomplaint",
            "complaint",
        ),
        EventType.SPAM,
    ),
}
_NOT_ALNUM = re.compile(r"[^0-9a-z]+")


def normalise_event_type(name: str) -> EventType | None:
    """The event type a name means, tolerant of case, spacing and Mailmodo/Segment prefixes."""
    if not isinstance(name, str):
        return None
    compact = _NOT_ALNUM.sub("", name.lower())
    candidates = [compact]
    if compact.startswith("mm"):
        compact = compact[2:]
        candidates.append(compact)
    if compact.startswith("email"):
        candidates.append(compact[5:])
    for candidate in candidates:
        found = _EVENT_ALIASES.get(candidate)
        if found is not None:
            return found
    return None


_KNOWN_EVENTS = [e.value for e in EventType]


# --------------------------------------------------------------------------- small readers

_EMAIL_KEYS = ("email", "recipient_email", "email_address", "user_email", "contact_email")
_CLEVERTAP_ID_KEYS = frozenset({"clevertapid", "objectid"})
_CAMEL_1 = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_CAMEL_2 = re.compile(r"(?<=[A-Z])(?=[A-Z][a-z])")
_NON_WORD = re.compile(r"[\W_]+")


def snake_key(key: object) -> str:
    """``campaignName``, ``Campaign Name`` and ``campaign-name`` all become ``campaign_name``."""
    return _snake(str(key))


@text_cache(maxsize=4096)
def _snake(key: str) -> str:
    # Cached: the same few dozen keys arrive in every callback, and the regexes dominated
    # the cost of parsing one.
    text = _CAMEL_2.sub("_", _CAMEL_1.sub("_", key.strip()))
    snake = _NON_WORD.sub("_", text.lower()).strip("_")
    return snake or key


def _compact(key: object) -> str:
    return _NOT_ALNUM.sub("", str(key).lower())


def _find_clevertap_id(*sources: object) -> str | None:
    """The first usable CleverTap ID among the sources' ``clevertap_id``-like keys."""
    for source in sources:
        if not isinstance(source, dict):
            continue
        for key, value in source.items():
            if _compact(key) in _CLEVERTAP_ID_KEYS:
                found = clean_clevertap_id(value)
                if found is not None:
                    return found
    return None


def _is_clevertap_id_key(key: object) -> bool:
    return _compact(key) in _CLEVERTAP_ID_KEYS


def _get(obj: dict[str, Any], *names: str) -> Any:
    """The first non-null value among keys matching ``names`` by their snake_case form."""
    wanted = {snake_key(n) for n in names}
    for key, value in obj.items():
        if value is not None and snake_key(key) in wanted:
            return value
    return None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text_id(value: object) -> str:
    """An identifier as text (``""`` when absent), used for dedup keys."""
    if value is None or isinstance(value, bool | dict | list):
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


# --------------------------------------------------------------------------- entry point


def parse_callback(body: Any, *, path_event: str | None = None) -> list[Activity]:
    """The activity events one Mailmodo call reports; ``CallbackError`` when it cannot be read.

    ``path_event`` is the ``{event}`` URL segment: it names the event for journey webhook
    cards (whose body has none) and overrides the event named in an activity body.
    """
    url_event: EventType | None = None
    if path_event is not None and path_event.strip():
        url_event = normalise_event_type(path_event)
        if url_event is None:
            raise CallbackError(
                "unknown event type in the URL",
                {"event": path_event, "known": _KNOWN_EVENTS},
            )
    if isinstance(body, list):
        if not body:
            raise CallbackError(
                "empty array", {"hint": "send one activity event object or an array of them"}
            )
        events: list[Activity] = []
        for index, item in enumerate(body):
            if not isinstance(item, dict):
                raise CallbackError(
                    "array items must be objects",
                    {"index": index, "got": type(item).__name__},
                )
            try:
                events.append(_parse_object(item, url_event))
            except CallbackError as exc:
                raise CallbackError(
                    f"item {index}: {exc.message}", {"index": index, "error": exc.detail}
                ) from exc
        return events
    if not isinstance(body, dict):
        raise CallbackError(
            "expected a JSON object",
            {
                "got": type(body).__name__,
                "hint": "send an activity event, a journey webhook card body or a form submission",
            },
        )
    return [_parse_object(body, url_event)]


def _parse_object(body: dict[str, Any], url_event: EventType | None) -> Activity:
    keys = {_compact(k) for k in body}
    if "triggerdata" in keys:
        return _parse_journey(body, url_event)
    if ("responseid" in keys or "recipientemail" in keys) and not (keys & _EVENT_KEY_SET):
        return _parse_form(body)
    nested = {_compact(k) for k in _dict(_get(body, "properties"))}
    if keys & _EVENT_KEY_SET or nested & _EVENT_KEY_SET or url_event is not None:
        return _parse_activity(body, url_event)
    raise CallbackError(
        "unknown payload shape",
        {
            "missing": ["event"],
            "hint": "expected an activity event with 'event', a journey webhook card body with "
            "'triggerData' (event type in the URL, e.g. /events/opened) or a form "
            "submission with 'responseId' and 'recipientEmail'",
            "keys": sorted(str(k) for k in body)[:50],
        },
    )


def _require_recipient(
    email: str | None, clevertap_id: str | None, raw_email: object, where: str
) -> None:
    if email is not None or clevertap_id is not None:
        return
    detail: dict[str, Any] = {"missing": ["email", "clevertap_id"], "where": where}
    if raw_email not in (None, ""):
        shown = raw_email if isinstance(raw_email, str) else repr(raw_email)
        detail["invalid"] = {"email": shown[:256]}
    raise CallbackError("no recipient: neither a valid email nor a clevertap_id", detail)


# --------------------------------------------------------------------------- activity events

_EVENT_KEYS = ("event", "event_name", "event_type")
_EVENT_KEY_SET = frozenset(_compact(k) for k in _EVENT_KEYS)
_TIMESTAMP_KEYS = ("timestamp", "ts", "time", "event_time", "event_timestamp", "occurred_at")
_EVENT_ID_KEYS = ("event_id", "message_id")
_SEGMENT_CALL_TYPES = frozenset({"track", "identify", "page", "screen", "group", "alias"})
#: Keys of an activity event that are not passed through as properties.
_ACTIVITY_RESERVED = frozenset(
    {
        *_EVENT_KEYS,
        *_EMAIL_KEYS,
        *_TIMESTAMP_KEYS,
        *_EVENT_ID_KEYS,
        "clevertap_id",
        "clevertapid",
        "object_id",
        "objectid",
        "properties",
        "traits",
        "context",
        "data",
        "recipient_data",
        "form_response",
        "answers",
        "integrations",
        "anonymous_id",
        "channel",
        "version",
        "sent_at",
        "received_at",
        "original_timestamp",
        "write_key",
        "request_id",
        "project_id",
    }
)
#: Other spellings of the documented property names (used only when the real name is absent).
_PROPERTY_ALIASES = {
    "subject": "email_subject",
    "subject_line": "email_subject",
    "url": "link_url",
    "link": "link_url",
    "hard_bounce": "is_hard_bounce",
    "bounce_reason": "reason",
    "unsubscribe_reason": "reason",
    "template": "template_name",
    "campaign": "campaign_name",
}


def _scalar_or_list(value: object) -> bool:
    if isinstance(value, str | int | float | bool):
        return True
    return isinstance(value, list) and all(
        v is None or isinstance(v, str | int | float | bool) for v in value
    )


def _parse_activity(body: dict[str, Any], url_event: EventType | None) -> Activity:
    nested = _dict(body.get("properties"))
    traits = _dict(body.get("traits")) or _dict(_dict(body.get("context")).get("traits"))
    raw_event = _get(body, *_EVENT_KEYS)
    if raw_event is None:
        raw_event = _get(nested, *_EVENT_KEYS)
    event_type = url_event
    if event_type is None:
        if raw_event is None:
            raise CallbackError(
                "event type unknown: put it in 'event' or in the URL, e.g. /events/opened",
                {"missing": ["event"], "known": _KNOWN_EVENTS},
            )
        event_type = normalise_event_type(raw_event) if isinstance(raw_event, str) else None
        if event_type is None:
            raise CallbackError("unknown event type", {"event": raw_event, "known": _KNOWN_EVENTS})

    data = _dict(_get(body, "data")) or _dict(_get(nested, "data"))
    recipient_data = _dict(_get(body, "recipient_data")) or _dict(_get(nested, "recipient_data"))

    raw_email = _get(body, *_EMAIL_KEYS)
    if raw_email is None:
        raw_email = _get(nested, *_EMAIL_KEYS)
    if raw_email is None:
        raw_email = _get(traits, "email")
    if raw_email is None:
        raw_email = _get(recipient_data, "email") or _get(data, "email")
    email = valid_email(raw_email)
    # Segment's email_id may be an address or a message id: an address fills a missing email.
    email_id = _get(body, "email_id")
    if email_id is None:
        email_id = _get(nested, "email_id")
    email_id_is_address = valid_email(email_id) is not None
    if email is None and email_id_is_address:
        email = valid_email(email_id)
        raw_email = email_id
    clevertap_id = _find_clevertap_id(body, nested, data, recipient_data)
    _require_recipient(email, clevertap_id, raw_email, "activity event")

    raw_ts = _get(body, *_TIMESTAMP_KEYS)
    if raw_ts is None:
        raw_ts = _get(nested, *_TIMESTAMP_KEYS)
    ts = to_epoch_seconds(raw_ts)

    raw_id = _get(body, *_EVENT_ID_KEYS)
    if raw_id is None:
        raw_id = _get(nested, *_EVENT_ID_KEYS)
    dedup_id = _text_id(raw_id)

    properties: dict[str, Any] = {}
    for source in (nested, body):
        for key, value in source.items():
            name = snake_key(key)
            if value is None or name in _ACTIVITY_RESERVED or _is_clevertap_id_key(key):
                continue
            if name == "type" and str(value).strip().lower() in _SEGMENT_CALL_TYPES:
                continue
            if name == "email_id" and email_id_is_address:
                continue
            if _scalar_or_list(value):
                properties[name] = value
    for alias, real in _PROPERTY_ALIASES.items():
        if alias in properties:
            value = properties.pop(alias)
            properties.setdefault(real, value)

    if event_type is EventType.BOUNCED and "is_hard_bounce" not in properties:
        # "hard bounce" / "soft bounce" as the event's name say what the flag would.
        compact = _NOT_ALNUM.sub("", raw_event.lower()) if isinstance(raw_event, str) else ""
        if "hardbounce" in compact or "softbounce" in compact:
            properties["is_hard_bounce"] = "hardbounce" in compact

    answers: dict[str, Any] = {}
    if event_type is EventType.FORM_SUBMITTED:
        raw_answers = _get(body, "form_response", "answers")
        if raw_answers is None:
            raw_answers = _get(nested, "form_response", "answers")
        answers = _answers_from(raw_answers)

    return Activity(
        type=event_type,
        email=email,
        clevertap_id=clevertap_id,
        ts=ts,
        dedup_id=dedup_id,
        properties=properties,
        form_answers=answers,
        kind="activity",
    )


def _answers_from(raw: object) -> dict[str, Any]:
    """``form_response`` as answers: an object as is, JSON text decoded, anything else kept."""
    if raw is None:
        return {}
    if isinstance(raw, str):
        try:
            decoded = json.loads(raw)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict):
            return decoded
    if isinstance(raw, dict):
        return dict(raw)
    if raw in ("", [], {}):
        return {}
    return {"Response": raw}


# --------------------------------------------------------------------------- flat form webhook

#: Keys of a form submission that describe it rather than answer a question.
_FORM_METADATA = frozenset(
    _compact(k)
    for k in (
        "fuuid",
        "next-step-id",
        "total-steps",
        "responseId",
        "recipientEmail",
        "formId",
        "formName",
        "recordedAt",
        "submissionSource",
        "recipientData",
        "campaignId",
        "campaignName",
        "templateName",
        "templateId",
        "clevertap_id",
        "objectId",
    )
)


@dataclass(slots=True)
class _Form:
    email: str | None
    raw_email: object
    clevertap_id: str | None
    ts: int | None
    response_id: str
    properties: dict[str, Any]
    answers: dict[str, Any]


def _read_form(form: dict[str, Any]) -> _Form:
    """The parts of a form submission, shared by the flat webhook and the journey envelope."""
    recipient_data = _dict(_get(form, "recipientData"))
    raw_email = _get(form, "recipientEmail")
    if raw_email is None:
        raw_email = _get(recipient_data, "email")
    recorded = _get(form, "recordedAt")
    raw_ts = _get(recorded, "ts") if isinstance(recorded, dict) else recorded
    response_id = _text_id(_get(form, "responseId"))
    properties: dict[str, Any] = {}
    for name, keys in (
        ("form_id", ("formId",)),
        ("form_name", ("formName",)),
        ("response_id", ("responseId",)),
        ("submission_type", ("submissionSource",)),
        ("campaign_id", ("campaignId",)),
        ("campaign_name", ("campaignName",)),
        ("template_id", ("templateId",)),
        ("template_name", ("templateName",)),
    ):
        value = _get(form, *keys)
        if value is not None and _scalar_or_list(value):
            properties[name] = value
    answers = {key: value for key, value in form.items() if _compact(key) not in _FORM_METADATA}
    return _Form(
        email=valid_email(raw_email),
        raw_email=raw_email,
        clevertap_id=_find_clevertap_id(form, recipient_data),
        ts=to_epoch_seconds(raw_ts),
        response_id=response_id,
        properties=properties,
        answers=answers,
    )


def _parse_form(body: dict[str, Any]) -> Activity:
    form = _read_form(body)
    _require_recipient(form.email, form.clevertap_id, form.raw_email, "form submission")
    return Activity(
        type=EventType.FORM_SUBMITTED,
        email=form.email,
        clevertap_id=form.clevertap_id,
        ts=form.ts,
        dedup_id=form.response_id,
        properties=form.properties,
        form_answers=form.answers,
        kind="form",
    )


# --------------------------------------------------------------------------- journey webhook card


def _parse_journey(body: dict[str, Any], url_event: EventType | None) -> Activity:
    trigger = _get(body, "triggerData")
    if not isinstance(trigger, dict):
        raise CallbackError(
            "'triggerData' must be an object",
            {"got": type(trigger).__name__, "missing": ["triggerData.email"]},
        )
    form_data = _dict(_get(trigger, "formSubmissionData")) or _dict(
        _get(body, "formSubmissionData")
    )
    event_type = url_event
    if event_type is None and form_data:
        event_type = EventType.FORM_SUBMITTED
    if event_type is None:
        raise CallbackError(
            "event type unknown: put it in the URL, e.g. /events/opened",
            {
                "missing": ["event"],
                "hint": "a journey webhook card body names no event; use "
                "/mailmodo/{secret}/events/{event}",
                "known": _KNOWN_EVENTS,
            },
        )
    form = _read_form(form_data) if form_data else None
    trigger_data = _dict(_get(trigger, "data"))
    event_property = _dict(_get(trigger, "eventProperty"))

    raw_email = _get(trigger, "email")
    if raw_email is None and form is not None:
        raw_email = form.raw_email
    if raw_email is None:
        raw_email = _get(trigger_data, "email")
    email = valid_email(raw_email)
    clevertap_id = _find_clevertap_id(body, trigger, trigger_data, event_property)
    if clevertap_id is None and form is not None:
        clevertap_id = form.clevertap_id
    _require_recipient(email, clevertap_id, raw_email, "journey webhook card (triggerData)")

    ts = to_epoch_seconds(_get(body, *_TIMESTAMP_KEYS))
    if ts is None:
        ts = to_epoch_seconds(_get(trigger, *_TIMESTAMP_KEYS))
    if ts is None and form is not None and event_type is EventType.FORM_SUBMITTED:
        ts = form.ts  # only then: the time of the response is not the time of, say, an open

    journey_id = _text_id(_get(trigger, "journeyId"))
    user_id = _text_id(_get(trigger, "userId"))
    email_ref = _text_id(_get(body, "lastCampaignEmailRef"))
    properties: dict[str, Any] = {}
    for key, value in event_property.items():
        if value is not None and _scalar_or_list(value) and not _is_clevertap_id_key(key):
            properties.setdefault(snake_key(key), value)
    envelope: dict[str, Any] = {
        "journey_id": journey_id,
        "user_id": user_id,
        "trigger_source": _get(trigger, "triggerSource"),
        "campaign_id": _get(body, "lastCampaignId"),
        "email_ref": email_ref,
        "email_type": _get(_dict(_get(body, "eventData")), "type"),
    }
    for key, value in envelope.items():
        if value not in (None, "") and _scalar_or_list(value):
            properties[key] = value

    answers: dict[str, Any] = {}
    dedup_id = ""
    if journey_id or user_id:
        dedup_id = f"journey:{journey_id}:{user_id}:{event_type.value}:{email_ref}"
    if form is not None and event_type is EventType.FORM_SUBMITTED:
        for key, value in form.properties.items():
            properties.setdefault(key, value)
        answers = form.answers
        # The same response may also come through the flat form webhook: one key for both.
        if form.response_id:
            dedup_id = form.response_id
    return Activity(
        type=event_type,
        email=email,
        clevertap_id=clevertap_id,
        ts=ts,
        dedup_id=dedup_id,
        properties=properties,
        form_answers=answers,
        kind="journey",
    )
