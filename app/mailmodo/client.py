"""Typed client for the parts of Mailmodo's API the bridge calls (header ``mmApiKey``)."""

from __future__ import annotations

from urllib.parse import quote

import httpx

from app.mailmodo.config import MailmodoConfig
from app.outbox.models import Operation
from app.upstream import DirectPoster, UpstreamResponse, pooled_client, send

PATHS: dict[Operation, str] = {
    Operation.CAMPAIGN_TRIGGER: "/api/v1/triggerCampaign/{target}",
    Operation.JOURNEY_START: "/hooks/start/{target}",
    Operation.JOURNEY_ABORT: "/hooks/abort/{target}",
    # The list is named in the body; the path has no target.
    Operation.LIST_SYNC: "/api/v1/addToList",
    # Consent calls name the contact in the body, too.
    Operation.CONTACT_UNSUBSCRIBE: "/api/v1/contacts/unsubscribe",
    Operation.CONTACT_RESUBSCRIBE: "/api/v1/contacts/resubscribe",
}


class MailmodoClient:
    """One pooled ``AsyncClient`` with explicit timeouts; never retries by itself."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        timeout: float = 15.0,
        max_connections: int = 20,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.timeout = timeout
        self._client = pooled_client(
            base_url=base_url,
            headers={"mmApiKey": api_key, "Accept": "application/json"},
            timeout=timeout,
            max_connections=max_connections,
            transport=transport,
        )
        self._poster = DirectPoster(self._client)

    @classmethod
    def from_config(
        cls, config: MailmodoConfig, transport: httpx.AsyncBaseTransport | None = None
    ) -> MailmodoClient:
        return cls(
            base_url=config.api_url,
            api_key=config.key,
            timeout=config.timeout,
            max_connections=config.max_concurrency,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def call(self, operation: Operation, target: str, payload: str) -> UpstreamResponse:
        """POST an already-serialised JSON ``payload`` for ``operation`` on ``target``."""
        path = PATHS[operation].format(target=self.path_segment(target))
        return await self._poster.post_json(path, payload.encode())

    @staticmethod
    def path_segment(target: str) -> str:
        """``target`` as one path segment. Dots are unreserved, so quote() keeps "." and
        ".." — which URL normalisation would then remove; encode them so the id stays an id."""
        if not target.strip("."):
            return quote(target, safe="").replace(".", "%2E")
        return quote(target, safe="")

    async def get_contact(self, email: str) -> UpstreamResponse:
        """``GET /api/v1/getContactDetails``: the contact's properties are in ``data``."""
        request = self._client.build_request(
            "GET", "/api/v1/getContactDetails", params={"email": email}
        )
        return await send(self._client, request)

    async def trigger_campaign(self, campaign_id: str, payload: str) -> UpstreamResponse:
        return await self.call(Operation.CAMPAIGN_TRIGGER, campaign_id, payload)

    async def start_journey(self, journey_id: str, payload: str) -> UpstreamResponse:
        return await self.call(Operation.JOURNEY_START, journey_id, payload)

    async def abort_journey(self, journey_id: str, payload: str) -> UpstreamResponse:
        return await self.call(Operation.JOURNEY_ABORT, journey_id, payload)
