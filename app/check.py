"""``ctmm-bridge check``: the database, then every upstream in the registry, each with one
cheap call (see ``app.system.check`` and ``<upstream>/check.py``)."""

from __future__ import annotations

import httpx

from app.config import Settings
from app.system.check import check_database
from app.upstream import CheckResult
from app.upstreams import UPSTREAMS


def check(
    settings: Settings, *, timeout: float = 10.0, transport: httpx.BaseTransport | None = None
) -> list[CheckResult]:
    return [
        check_database(settings),
        *(a.check(settings, timeout=timeout, transport=transport) for a in UPSTREAMS.values()),
    ]
