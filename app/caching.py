"""A memo for functions of text that callers choose (header values, JSON keys, names).

``functools.lru_cache`` keeps up to ``maxsize`` keys whatever their size: 64 Authorization
headers of 16 MB each pinned a gigabyte. Here only short texts are kept; a longer one is
computed every time (correct, a little slower, and never held)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar, cast

P = ParamSpec("P")
R = TypeVar("R")

#: The longest text kept by default: property names, event names and credentials are far
#: shorter.
MAX_KEY_CHARS = 256


def text_cache(
    maxsize: int, max_key_chars: int = MAX_KEY_CHARS
) -> Callable[[Callable[Concatenate[str, P], R]], Callable[Concatenate[str, P], R]]:
    """``lru_cache(maxsize)`` for a function whose first argument is a text, keeping only
    texts of at most ``max_key_chars`` characters."""

    def decorate(fn: Callable[Concatenate[str, P], R]) -> Callable[Concatenate[str, P], R]:
        # The arguments are the function's own: hashable wherever the function is memoised.
        cached = cast(Callable[Concatenate[str, P], R], functools.lru_cache(maxsize=maxsize)(fn))

        def memo(key: str, /, *args: P.args, **kwargs: P.kwargs) -> R:
            if len(key) > max_key_chars:
                return fn(key, *args, **kwargs)
            return cached(key, *args, **kwargs)

        functools.update_wrapper(memo, fn)
        return memo

    return decorate
