"""CleverTap as a source: the bodies its webhooks send, read tolerantly into neutral
``Recipient`` records (``app.recipient``).

CleverTap changes the casing of keys between samples (``Email``/``email``,
``ObjectId``/``objectId``) and sends ``profiles`` as an array or a single object, so these
bodies are read by hand, matching keys case-insensitively, rather than by strict models.

Three shapes are understood:

* **Profile variables** (CleverTap's default body): ``targetId``, ``key_values`` and
  ``profiles``. Each profile becomes one recipient.
* **Custom body in Mailmodo's own shape**: ``email``, ``data``, ``campaign_data``, ``subject``,
  ``replyTo``, ``fromName``, ``addToList``, ``reason``, ``allowDuplicateEmail`` and
  ``clevertap_id`` (top level or inside ``data``). One recipient.
* **Test call**: ``"is_test": true`` (sent when a webhook template is saved).

Personalisation keys: CleverTap property names such as ``"First Name"`` or
``"customer type"`` become Mailmodo variables by lower-casing them, folding accents
(``é`` -> ``e``) and turning every run of characters other than ASCII letters and digits into
one underscore (``first_name``, ``customer_type``). Nested objects are flattened with ``_``
(``address_city``), lists are joined with ``", "``, CleverTap dates (``"$D_1664890781"``)
become ISO 8601 UTC strings, and ``null`` values are left out. Precedence, lowest first:
profile data, the campaign's ``key_values``, the profile's own ``key_values``;
``clevertap_id`` is always the profile's ``objectId``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from app.identity.schemas import clean_clevertap_id, valid_email
from app.recipient import ParsedCall, Recipient, Skipped, personalisation_key

__all__ = [
    "ParsedCall",
    "Recipient",
    "ShapeError",
    "Skipped",
    "is_test_call",
    "lower_keys",
    "parse_call",
    "personalisation",
    "personalisation_key",
]

_CT_DATE = re.compile(r"^\$D_(-?\d+)$")

#: Mailmodo trigger fields a custom body may carry besides ``email`` and ``data``.
PASSTHROUGH_FIELDS = {
    "subject": "subject",
    "replyto": "replyTo",
    "fromname": "fromName",
    "addtolist": "addToList",
    "reason": "reason",
    "allowduplicateemail": "allowDuplicateEmail",
}
CLEVERTAP_ID_KEYS = ("clevertap_id", "clevertapid", "objectid")


class ShapeError(ValueError):
    """Valid JSON that is not a body the bridge understands (answered 422)."""

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


def lower_keys(obj: dict[str, Any]) -> dict[str, Any]:
    """Keys lower-cased; on a clash the first spelling wins (stable for the same body)."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        out.setdefault(str(key).lower(), value)
    return out


def _value(value: Any) -> Any:
    if isinstance(value, str):
        match = _CT_DATE.match(value)
        if match:
            try:
                stamp = datetime.fromtimestamp(int(match.group(1)), UTC)
            except (ValueError, OverflowError, OSError):
                return value  # outside what a date can be: keep CleverTap's text
            return stamp.isoformat().replace("+00:00", "Z")
        return value
    if isinstance(value, list):
        return ", ".join(str(_value(v)) for v in value if v is not None)
    return value


def personalisation(values: Any, prefix: str = "") -> dict[str, Any]:
    """CleverTap properties as flat Mailmodo personalisation variables (see module doc)."""
    out: dict[str, Any] = {}
    if not isinstance(values, dict):
        return out
    for raw_key, raw_value in values.items():
        key = personalisation_key(str(raw_key))
        if prefix:
            key = f"{prefix}_{key}"
        if raw_value is None:
            continue
        if isinstance(raw_value, dict):
            out.update(personalisation(raw_value, key))
        else:
            out[key] = _value(raw_value)
    return out


def is_test_call(body: dict[str, Any]) -> bool:
    return _is_test(lower_keys(body))


def _is_test(top: dict[str, Any]) -> bool:
    """``top``: the body with lower-cased keys."""
    flag = top.get("is_test")
    return flag is True or (isinstance(flag, str) and flag.strip().lower() == "true")


def parse_call(body: Any) -> ParsedCall:
    """Recipients of one CleverTap call; raises ``ShapeError`` for bodies of unknown shape."""
    if not isinstance(body, dict):
        raise ShapeError(
            "expected a JSON object",
            {
                "got": type(body).__name__,
                "hint": "send CleverTap's profile variables or a Mailmodo-shaped custom body",
            },
        )
    top = lower_keys(body)
    if _is_test(top):
        return ParsedCall("test", [], [])
    if "profiles" in top:
        return _parse_profiles(top)
    if "email" in top:
        return _parse_custom(body, top)
    raise ShapeError(
        "unknown body shape",
        {
            "missing": ["profiles", "email"],
            "hint": "expected CleverTap's default body (targetId, key_values, profiles) or a "
            "custom body in Mailmodo's shape with 'email'",
            "keys": sorted(str(k) for k in body)[:50],
        },
    )


def _parse_profiles(top: dict[str, Any]) -> ParsedCall:
    profiles = top["profiles"]
    if isinstance(profiles, dict):
        profiles = [profiles]
    if not isinstance(profiles, list):
        raise ShapeError(
            "'profiles' must be an array or an object", {"got": type(profiles).__name__}
        )
    call_values = personalisation(top.get("key_values"))
    recipients: list[Recipient] = []
    skipped: list[Skipped] = []
    for index, profile in enumerate(profiles):
        if not isinstance(profile, dict):
            skipped.append(Skipped(index, "profile is not an object"))
            continue
        p = lower_keys(profile)
        raw_profile_data = p.get("profiledata")
        profile_data: dict[str, Any] = (
            raw_profile_data if isinstance(raw_profile_data, dict) else {}
        )
        raw_email = p.get("email")
        if raw_email is None:
            raw_email = lower_keys(profile_data).get("email")
        email = valid_email(raw_email)
        if email is None:
            skipped.append(
                Skipped(index, "no email" if raw_email in (None, "") else "invalid email")
            )
            continue
        clevertap_id = clean_clevertap_id(p.get("objectid"))
        data: dict[str, Any] = {}
        for key in ("name", "phone"):
            if isinstance(p.get(key), str | int | float) and p.get(key) != "":
                data[key] = p[key]
        identity = p.get("identity")
        if isinstance(identity, str | int) and str(identity).strip():
            data["identity"] = str(identity)
        data.update(personalisation(profile_data))
        data.update(call_values)
        data.update(personalisation(p.get("key_values")))
        if clevertap_id is not None:
            data["clevertap_id"] = clevertap_id
        campaign_data = personalisation(p.get("event_properties"))
        all_identities = p.get("all_identities")
        identified = "identity" in data or (
            isinstance(all_identities, list) and any(str(i).strip() for i in all_identities)
        )
        recipients.append(
            Recipient(email, clevertap_id, data, campaign_data, identified=identified)
        )
    return ParsedCall("profiles", recipients, skipped)


def _parse_custom(body: dict[str, Any], top: dict[str, Any]) -> ParsedCall:
    raw_email = top.get("email")
    email = valid_email(raw_email)
    if email is None:
        reason = "no email" if raw_email in (None, "") else "invalid email"
        return ParsedCall("custom", [], [Skipped(0, reason)])
    data = top.get("data")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ShapeError("'data' must be an object", {"got": type(data).__name__})
    campaign_data = top.get("campaign_data")
    if campaign_data is not None and not isinstance(campaign_data, dict):
        raise ShapeError("'campaign_data' must be an object", {"got": type(campaign_data).__name__})
    data = dict(data)
    clevertap_id = None
    for source in (top, lower_keys(data)):
        for key in CLEVERTAP_ID_KEYS:
            clevertap_id = clean_clevertap_id(source.get(key))
            if clevertap_id:
                break
        if clevertap_id:
            break
    # Mailmodo's own CleverTap integration looks for it in data, under this name.
    for key in [k for k in data if str(k).lower() in CLEVERTAP_ID_KEYS]:
        del data[key]
    if clevertap_id is not None:
        data["clevertap_id"] = clevertap_id
    extras = {
        name: top[key] for key, name in PASSTHROUGH_FIELDS.items() if top.get(key) is not None
    }
    return ParsedCall(
        "custom", [Recipient(email, clevertap_id, data, dict(campaign_data or {}), extras)], []
    )
