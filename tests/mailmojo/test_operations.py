"""The operator's view treats Mailmojo like the other upstreams: stats per upstream and
direction, delivery filters, metrics, and the live check in the registry."""

from __future__ import annotations

import httpx

from app.outbox.models import Operation, Upstream
from app.upstreams import MAILMOJO, UPSTREAM_OF, UPSTREAMS
from app.worker.mailmojo import MailmojoDeliverer
from tests.conftest import ADMIN_TOKEN, CT_AUTH
from tests.mailmojo.conftest import ROUTE, FakeMailmojo, worked_example_call

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def test_mailmojo_is_in_the_registry() -> None:
    assert UPSTREAMS[Upstream.MAILMOJO] is MAILMOJO
    assert UPSTREAM_OF[Operation.MAILMOJO_SYNC] is Upstream.MAILMOJO


async def test_stats_filters_and_metrics_know_mailmojo(
    client: httpx.AsyncClient, mailmojo: FakeMailmojo, deliverer: MailmojoDeliverer
) -> None:
    await client.post(ROUTE, json=worked_example_call(), headers=CT_AUTH)
    await deliverer.run_once(10)

    stats = (await client.get("/admin/stats", headers=ADMIN)).json()
    assert stats["counts"]["clevertap_to_mailmojo"]["delivered"] == 1
    assert stats["upstreams"]["mailmojo"] == {
        "paused": False,
        "reason": None,
        "since": None,
        "next_probe_at": None,
    }
    listed = (
        await client.get("/admin/deliveries", params={"upstream": "mailmojo"}, headers=ADMIN)
    ).json()
    assert [(d["upstream"], d["state"]) for d in listed["items"]] == [("mailmojo", "delivered")]

    metrics = (await client.get("/metrics")).text
    assert 'ctmm_bridge_outbox_items{state="delivered",upstream="mailmojo"} 1.0' in metrics
    assert 'ctmm_bridge_upstream_paused{upstream="mailmojo"} 0.0' in metrics
    assert 'ctmm_bridge_upstream_attempts_total{outcome="delivered",upstream="mailmojo"}' in metrics
