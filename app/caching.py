"""A memo for functions of text that callers choose (header values, JSON keys, names).

``functools.lru_cache`` keeps up to ``maxsize`` keys whatever their size: 64 Authorization
headers of 16 MB each pinned a gigabyte. Here only short texts are kept; a longer one is
computed every time (correct, a little slower, and never held)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

#: The longest text kept by default: property names, event names and credentials are far
#: shorter.
MAX_KEY_CHARS = 256


def text_cache(
    maxsize: int, max_key_chars: int = MAX_KEY_CHARS
) -> Callable[[Callable[Concatenate[str, P], R]], Callable[Concatenate[str, P], R]]:
    """A memo for a function whose first argument is a text (the others positional and
    hashable), keeping at most ``maxsize`` results, and only for texts of at most
    ``max_key_chars`` characters. Full, it starts again empty: these memos serve a few keys
    that repeat on every call (cheaper on the hot path than ``lru_cache`` behind a check)."""

    def decorate(fn: Callable[Concatenate[str, P], R]) -> Callable[Concatenate[str, P], R]:
        memo: dict[object, R] = {}

        def cached(key: str, /, *args: P.args, **kwargs: P.kwargs) -> R:
            if kwargs:  # not a memo key: computed every time
                return fn(key, *args, **kwargs)
            token: object = (key, *args) if args else key
            try:
                return memo[token]
            except KeyError:
                pass
            value = fn(key, *args, **kwargs)
            if len(key) <= max_key_chars:
                if len(memo) >= maxsize:
                    memo.clear()
                memo[token] = value
            return value

        functools.update_wrapper(cached, fn)
        return cached

    return decorate
