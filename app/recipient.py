"""Who CleverTap asked us to reach, and with what data: the neutral record between the two
directions. ``app.clevertap.source`` produces it from a webhook call; ``app.mailmodo.bodies``
turns it into Mailmodo request bodies; ``app.contacts.rules`` decides on it. Neither upstream
imports the other.

``Recipient.data`` keys are personalisation keys (``personalisation_key``): whoever looks up a
field by its CleverTap name (say the tags field ``"Tags"``) folds the name the same way.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from app.caching import text_cache

__all__ = ["ParsedCall", "Recipient", "Skipped", "personalisation_key"]

_NON_ALNUM = re.compile(r"[^0-9a-z]+")


@dataclass(slots=True)
class Recipient:
    """``data``: personalisation variables; ``campaign_data``: the campaign's event
    properties; ``extras``: the trigger fields a custom body named (``subject``, ``reason``,
    ``allowDuplicateEmail``, ...), under the names the call used."""

    email: str
    clevertap_id: str | None
    data: dict[str, Any] = field(default_factory=dict)
    campaign_data: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    #: False for a guest: a profile with no identity at all, only a CleverTap ID.
    identified: bool = True


@dataclass(slots=True)
class Skipped:
    index: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "reason": self.reason}


@dataclass(slots=True)
class ParsedCall:
    """What one call asked for: its recipients and the entries skipped (with why)."""

    kind: str  # "profiles" | "custom" | "test"
    recipients: list[Recipient]
    skipped: list[Skipped]


@text_cache(maxsize=4096)
def personalisation_key(key: str) -> str:
    """``"Prénom d'usage"`` -> ``prenom_d_usage``: accents folded, then ASCII snake_case.

    Cached: the same few property names arrive in every call, and folding them character by
    character was a tenth of the CPU time of a call."""
    folded = unicodedata.normalize("NFKD", key.strip().lower())
    ascii_key = "".join(c for c in folded if not unicodedata.combining(c))
    return _NON_ALNUM.sub("_", ascii_key).strip("_") or "_"
