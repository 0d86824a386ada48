"""Typed client for CleverTap's upload API (``POST /1/upload``, and ``/1/subscribe``)."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from app.clevertap.config import CleverTapConfig
from app.upstream import UpstreamResponse, pooled_client, send


class CleverTapClient:
    """One pooled ``AsyncClient`` for one CleverTap project; never retries by itself."""

    def __init__(
        self,
        *,
        base_url: str,
        account_id: str,
        passcode: str,
        timeout: float = 30.0,
        max_connections: int = 5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = pooled_client(
            base_url=base_url,
            headers={
                "X-CleverTap-Account-Id": account_id,
                "X-CleverTap-Passcode": passcode,
                "Content-Type": "application/json",
            },
            timeout=timeout,
            max_connections=max_connections,
            transport=transport,
        )

    @classmethod
    def from_config(
        cls, config: CleverTapConfig, transport: httpx.AsyncBaseTransport | None = None
    ) -> CleverTapClient:
        return cls(
            base_url=config.base_url,
            account_id=config.account_id or "",
            passcode=config.passcode or "",
            timeout=config.timeout,
            max_connections=config.max_concurrency,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def upload(
        self, records: list[dict[str, Any]], path: str = "/1/upload"
    ) -> UpstreamResponse:
        """Upload up to 1000 records; per-record results are in the 200 answer's body.

        ``path`` is ``/1/subscribe`` for email subscription records (same body, same answers).
        """
        request = self._client.build_request("POST", path, content=orjson.dumps({"d": records}))
        return await send(self._client, request)
