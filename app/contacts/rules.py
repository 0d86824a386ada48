"""Contact-sync rules (``shared/reference/contact-sync.md``), as pure functions.

ONE implementation for every contact store the bridge syncs into (Mailmodo's list sync and
Mailmojo's): each upstream's ``bodies.py`` only maps the decisions onto its API.

R1 the email is always written. R2 ``first_name``, ``last_name`` and ``phone`` only fill blanks:
a value the contact already holds is never overwritten. R3 of several phones the first present
of mobile > default > work > home is used. R4 managed tags carry the prefix: the wanted ones are
normalised and prefixed (``wanted_tags``); Mailmodo, which has no tags, keeps them in one
property the bridge owns (``managed_tags``: ``<prefix>tags``, sorted, joined by commas), while
Mailmojo's real tag list is merged (``merge_tags``: tags without the prefix are never touched).
A call that names no tags leaves them alone. R5 profiles without a usable email, and guests (no
identity at all), are skipped.
"""

from __future__ import annotations

import re
from typing import Any

from app.recipient import ParsedCall, Recipient, Skipped

#: Personalisation keys (see ``app.recipient.personalisation_key``) that hold each kind of phone.
PHONE_KEYS: tuple[tuple[str, ...], ...] = (
    ("mobile", "mobile_phone", "mobile_number", "cell", "cell_phone"),  # mobile
    ("phone", "phone_number"),  # CleverTap's one standard phone: "default"
    ("work_phone", "work_number", "office_phone"),  # work
    ("home_phone", "home_number"),  # home
)
FIRST_NAME_KEYS = ("first_name", "firstname", "given_name")
LAST_NAME_KEYS = ("last_name", "lastname", "surname", "family_name")
FILL_BLANK_FIELDS = ("first_name", "last_name", "phone")
_TAG_CHARS = re.compile(r"[^0-9a-z]+")


def blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _first(data: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if not blank(data.get(key)):
            return data[key]
    return None


def candidates(data: dict[str, Any]) -> dict[str, Any]:
    """What the profile offers for the fill-blank fields (R2, R3)."""
    out: dict[str, Any] = {}
    first, last = _first(data, FIRST_NAME_KEYS), _first(data, LAST_NAME_KEYS)
    if first is not None:
        out["first_name"] = str(first).strip()
    if last is not None:
        out["last_name"] = str(last).strip()
    for keys in PHONE_KEYS:
        phone = _first(data, keys)
        if phone is not None:
            out["phone"] = str(phone).strip()
            break
    return out


def fill_blanks(offered: dict[str, Any], existing: dict[str, Any]) -> dict[str, Any]:
    """The offered fields the contact has no value for; each field decided on its own (R2).

    Fields are left out rather than sent empty: what ``""`` does to a stored value is
    undocumented.
    """
    return {
        key: value
        for key, value in offered.items()
        if key in FILL_BLANK_FIELDS and not blank(value) and blank(existing.get(key))
    }


def tag_name(raw: str) -> str:
    """Lower case, hyphen-separated, at most 99 characters (Sesamy's tag form)."""
    return _TAG_CHARS.sub("-", raw.strip().lower()).strip("-")[:99].strip("-")


def wanted_tags(value: Any, prefix: str) -> list[str] | None:
    """The wanted managed tags (normalised, prefixed, sorted, no duplicates), or None when the
    call names none. ``value`` is a list or a comma-separated string; an empty one means "no
    managed tags" (they are all removed)."""
    if value is None:
        return None
    items = value if isinstance(value, list) else str(value).split(",")
    return sorted({prefix + t for t in (tag_name(str(i)) for i in items) if t})


def managed_tags(value: Any, prefix: str) -> str | None:
    """Mailmodo's bridge-owned tags property for the wanted tags, or None when the call names
    none (an empty value clears the managed tags)."""
    tags = wanted_tags(value, prefix)
    return None if tags is None else ",".join(tags)


def merge_tags(existing: list[str], wanted: list[str] | None, prefix: str) -> list[str]:
    """The whole tag list to send (R4): the existing tags in their order, minus the managed ones
    no longer wanted, then the wanted ones not there yet. Tags without the prefix are never
    touched; with ``wanted`` None (the call named no tags) nothing changes. Keeping the order
    makes a replay produce the same list, so it writes nothing."""
    if wanted is None:
        return list(existing)
    keep = set(wanted)
    merged = [t for t in existing if not t.startswith(prefix) or t in keep]
    present = set(merged)
    return merged + [t for t in wanted if t not in present]


def skip_guests(parsed: ParsedCall) -> ParsedCall:
    """R5: guests (no identity, only a CleverTap ID) are skipped and counted."""
    kept: list[Recipient] = []
    skipped = list(parsed.skipped)
    for index, recipient in enumerate(parsed.recipients):
        if recipient.identified:
            kept.append(recipient)
        else:
            skipped.append(Skipped(index, "guest profile (no identity)"))
    return ParsedCall(parsed.kind, kept, skipped)
