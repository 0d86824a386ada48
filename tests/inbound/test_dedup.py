"""Both inbound dedup keys: CleverTap calls (Idempotency-Key or body hash) and Mailmodo
callbacks (the payload's own ids or body hash)."""

from __future__ import annotations

from app.activity import Activity, EventType
from app.inbound.dedup import MAX_DEDUP_KEY, call_dedup_key, callback_dedup_key

ROUTE = "mailmodo.events"


def activity(dedup_id: str, kind: EventType = EventType.OPENED) -> Activity:
    return Activity(type=kind, email="a@example.com", clevertap_id=None, ts=None, dedup_id=dedup_id)


# --- CleverTap calls -------------------------------------------------------------------------


def test_call_key_hashes_the_exact_body() -> None:
    a = call_dedup_key("clevertap.campaign:c1", None, b'{"a":1}')
    assert a == call_dedup_key("clevertap.campaign:c1", None, b'{"a":1}')
    assert a.startswith("clevertap.campaign:c1:sha256:")
    assert len(a.rsplit(":", 1)[1]) == 64
    assert a != call_dedup_key("clevertap.campaign:c1", None, b'{"a": 1}')
    assert a != call_dedup_key("clevertap.campaign:c2", None, b'{"a":1}')


def test_idempotency_key_replaces_the_body_hash() -> None:
    assert call_dedup_key("s", "  retry-7  ", b"one") == "s:idem:retry-7"
    assert call_dedup_key("s", "  retry-7  ", b"two") == "s:idem:retry-7"
    assert call_dedup_key("s", "", b"one").startswith("s:sha256:")


def test_idempotency_key_is_bounded() -> None:
    key = call_dedup_key("s", "k" * 1000, b"")
    assert key.startswith("sha256:")
    assert len(key) <= MAX_DEDUP_KEY
    assert key == call_dedup_key("s", "k" * 1000, b"other")
    # two long keys that share a long prefix are still two keys
    assert key != call_dedup_key("s", "k" * 999 + "j", b"")


# --- Mailmodo callbacks ----------------------------------------------------------------------


def test_callback_key_uses_the_payloads_own_ids_whatever_the_body() -> None:
    events = [activity("e1"), activity("e2")]
    assert callback_dedup_key(ROUTE, events, None, b"one") == "mailmodo.events:id:e1|e2"
    assert callback_dedup_key(ROUTE, events, "opened", b"two") == "mailmodo.events:id:e1|e2"


def test_long_id_lists_are_hashed() -> None:
    key = callback_dedup_key(ROUTE, [activity("x" * 150), activity("y" * 150)], None, b"")
    assert key.startswith("mailmodo.events:id:")
    assert len(key.rsplit(":", 1)[1]) == 64


def test_callback_without_ids_hashes_the_body_and_the_path_event() -> None:
    events = [activity("e1"), activity("")]
    plain = callback_dedup_key(ROUTE, events, None, b"body")
    assert plain.startswith("mailmodo.events::sha256:")
    named = callback_dedup_key(ROUTE, [activity("", EventType.CLICKED)], "Clicked", b"body")
    assert named.startswith("mailmodo.events:clicked:sha256:")
    assert plain.rsplit(":", 1)[1] == named.rsplit(":", 1)[1]
