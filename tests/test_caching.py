"""``app.caching.text_cache``: short texts are memoised, long ones never kept."""

from __future__ import annotations

import base64

from app.caching import MAX_KEY_CHARS, text_cache
from app.inbound.service import _basic_password


def test_short_texts_are_computed_once_long_ones_every_time() -> None:
    seen: list[tuple[str, int]] = []

    @text_cache(maxsize=8)
    def shout(text: str, times: int) -> str:
        seen.append((text, times))
        return text.upper() * times

    assert shout("ab", 2) == shout("ab", 2) == "ABAB"
    assert seen == [("ab", 2)]
    long = "x" * (MAX_KEY_CHARS + 1)
    assert shout(long, 1) == shout(long, 1) == long.upper()
    assert seen[1:] == [(long, 1), (long, 1)]  # never held, so computed again
    assert shout.__name__ == "shout"


def test_a_huge_basic_token_is_decoded_but_not_kept() -> None:
    """An Authorization header of any size gets its answer (the memo keeps short ones only)."""
    token = base64.b64encode(b"user:" + b"p" * 100_000).decode()
    assert _basic_password(token) == "p" * 100_000
    small = base64.b64encode(b"user:secret").decode()
    assert _basic_password(small) == "secret"


def test_a_full_memo_starts_again_and_keyword_calls_are_not_memoised() -> None:
    seen: list[str] = []

    @text_cache(maxsize=2)
    def echo(text: str, suffix: str = "") -> str:
        seen.append(text + suffix)
        return text + suffix

    assert [echo("a"), echo("b"), echo("c"), echo("c")] == ["a", "b", "c", "c"]
    assert seen == ["a", "b", "c"]  # full at two: emptied, then "c" kept
    assert echo("a", suffix="!") == "a!"
    assert echo("a", "?") == "a?"  # another argument, another entry
    assert echo("a") == "a"
