"""Typed client for the parts of Mailmojo's REST API the bridge calls (``contact-sync.md`` §4).

``Authorization: Bearer <token>``; every path is under ``/v1/`` and ends in a slash; an email
in a path is percent-encoded whole (``@`` and ``+`` included), so it stays one segment.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import orjson

from app.mailmojo.config import MailmojoConfig
from app.upstream import UpstreamResponse, pooled_client, send


def segment(value: str) -> str:
    """One path segment: everything but unreserved characters encoded, and a segment of only
    dots encoded too (URL normalisation would otherwise remove it)."""
    encoded = quote(value, safe="")
    return encoded if value.strip(".") else encoded.replace(".", "%2E")


class MailmojoClient:
    """One pooled ``AsyncClient`` with explicit timeouts; never retries by itself."""

    def __init__(
        self,
        *,
        base_url: str,
        api_token: str,
        timeout: float = 15.0,
        max_connections: int = 4,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.timeout = timeout
        self._client = pooled_client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_token}", "Accept": "application/json"},
            timeout=timeout,
            max_connections=max_connections,
            transport=transport,
        )

    @classmethod
    def from_config(
        cls, config: MailmojoConfig, transport: httpx.AsyncBaseTransport | None = None
    ) -> MailmojoClient:
        return cls(
            base_url=config.api_url,
            api_token=config.api_token or "",
            timeout=config.timeout,
            max_connections=config.max_concurrency,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> UpstreamResponse:
        request = self._client.build_request(
            method,
            path,
            content=None if body is None else orjson.dumps(body),
            headers=None if body is None else {"Content-Type": "application/json"},
        )
        return await send(self._client, request)

    async def get_contact(self, email: str) -> UpstreamResponse:
        """``GET /v1/contacts/{email}/``: the contact in any list; 404 when there is none."""
        return await self._call("GET", f"/v1/contacts/{segment(email)}/")

    async def subscribe(self, list_id: str, body: dict[str, Any]) -> UpstreamResponse:
        """``POST /v1/lists/{list_id}/subscribers/`` with a ``Subscriber`` body."""
        return await self._call("POST", f"/v1/lists/{segment(list_id)}/subscribers/", body)

    async def update_contact(self, email: str, body: dict[str, Any]) -> UpstreamResponse:
        """``PATCH /v1/contacts/{email}/`` with a ``BaseContact`` body."""
        return await self._call("PATCH", f"/v1/contacts/{segment(email)}/", body)
