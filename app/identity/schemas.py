"""What counts as an email address and as a CleverTap ID, in both directions.

CleverTap calls and Mailmodo callbacks both carry recipients, and a value that is accepted on
one side must be accepted on the other: an identity learnt from CleverTap is looked up by the
email Mailmodo reports. Webhook templates that were not rendered (``{{clevertap_id}}``,
``${email}``) and the usual stand-ins for "no value" are refused, never stored.
"""

from __future__ import annotations

import math
import re

_EMAIL_CHAR = r"[^@\s<>()\[\],;:\"\x00-\x1f\x7f]"
#: local@domain.tld, without spaces, control characters or the characters of a display name.
EMAIL_RE = re.compile(rf"^{_EMAIL_CHAR}+@{_EMAIL_CHAR}+\.{_EMAIL_CHAR}+$")
#: The markers of template languages CleverTap and Mailmodo users write webhooks in.
PLACEHOLDER = re.compile(r"(\$\{|\{\{|\{%|@\{|%%|\[\[)")
_NOT_IDS = frozenset(
    {"", "null", "none", "undefined", "nil", "na", "n/a", "nan", "0", "-1", "false", "true"}
)
_WHITESPACE = re.compile(r"\s")
MAX_EMAIL = 254
MAX_CLEVERTAP_ID = 256


def valid_email(value: object) -> str | None:
    """The trimmed address if it is one (``local@domain.tld``), else None."""
    if not isinstance(value, str):
        return None
    email = value.strip()
    if len(email) > MAX_EMAIL or not EMAIL_RE.match(email) or PLACEHOLDER.search(email):
        return None
    return email


def clean_clevertap_id(value: object) -> str | None:
    """A usable CleverTap ID (numbers become text), or None for blanks, stand-ins for "no
    value", unrendered template placeholders and anything with white space inside."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        value = str(int(value)) if value.is_integer() else str(value)
    elif isinstance(value, int):
        value = str(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if (
        text.lower() in _NOT_IDS
        or len(text) > MAX_CLEVERTAP_ID
        or PLACEHOLDER.search(text)
        or _WHITESPACE.search(text)
    ):
        return None
    return text
