"""/metrics: present, Prometheus-named, and moving with what the bridge does."""

from __future__ import annotations

import pickle
import re

import httpx
import respx
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from app.metrics import (
    ATTEMPTS,
    FINAL_STATES,
    WithChildren,
    bridge_families,
    merge_families,
)
from app.outbox.models import State
from app.state import BridgeState
from app.worker.build import build_mailmodo_deliverer
from tests.conftest import CT_AUTH, MM_SECRET, profiles_body
from tests.factories import add_heartbeat


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


ATTEMPTS_TOTAL = "ctmm_bridge_upstream_attempts_total"
LABELS = {"upstream": "mailmodo", "outcome": "delivered"}


async def scrape(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


async def test_metric_names_follow_prometheus_conventions(client: httpx.AsyncClient) -> None:
    text = await scrape(client)
    names = {f.name for f in text_string_to_metric_families(text) if f.name.startswith("ctmm")}
    for expected in (
        "ctmm_bridge_inbound_requests",
        "ctmm_bridge_inbound_items",
        "ctmm_bridge_deliveries",
        "ctmm_bridge_upstream_attempts",
        "ctmm_bridge_upstream_request_duration_seconds",
        "ctmm_bridge_outbox_items",
        "ctmm_bridge_outbox_oldest_pending_age_seconds",
        "ctmm_bridge_clevertap_upload_batch_records",
        "ctmm_bridge_parked_identities",
        "ctmm_bridge_upstream_paused",
        "ctmm_bridge_ingest_commit_batch_calls",
    ):
        assert expected in names, expected
    assert all(re.fullmatch(r"ctmm_bridge_[a-z0-9_]+", n) for n in names)


async def test_metrics_move_with_ingest_and_delivery(
    client: httpx.AsyncClient, state: BridgeState, mailmodo: respx.MockRouter
) -> None:
    route = "clevertap.campaign"
    before = await scrape(client)
    body = profiles_body("a@example.com", "b@example.com", None)
    assert (await client.post("/clevertap/campaigns/c1", json=body, headers=CT_AUTH)).is_success
    await client.post("/clevertap/campaigns/c1", json=body, headers=CT_AUTH)  # duplicate
    await client.post("/clevertap/campaigns/c1", content=b"{", headers=CT_AUTH)  # 400
    await client.post("/clevertap/campaigns/c1", json=body)  # 401
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("ctmm_bridge_inbound_requests_total", route=route, status="200") == 2
    assert delta("ctmm_bridge_inbound_requests_total", route=route, status="400") == 1
    assert delta("ctmm_bridge_inbound_requests_total", route=route, status="401") == 1
    assert delta("ctmm_bridge_inbound_items_total", route=route, result="accepted") == 2
    assert delta("ctmm_bridge_inbound_items_total", route=route, result="duplicate") == 2
    assert delta("ctmm_bridge_inbound_items_total", route=route, result="skipped") == 2
    assert delta("ctmm_bridge_inbound_items_total", route=route, result="rejected") == 1
    assert value(after, "ctmm_bridge_outbox_items", upstream="mailmodo", state="pending") == 2
    assert value(after, "ctmm_bridge_outbox_oldest_pending_age_seconds", upstream="mailmodo") >= 0

    mailmodo.post("/api/v1/triggerCampaign/c1").mock(
        side_effect=[
            httpx.Response(200, json={"success": True, "ref": "r1"}),
            httpx.Response(503, json={"message": "down"}),
        ]
    )
    deliverer = build_mailmodo_deliverer(state.engine, state.settings, "metrics-test")
    assert deliverer is not None
    await deliverer.run_once(10)
    final = await scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(final, name, **labels) - value(after, name, **labels)

    assert (
        moved("ctmm_bridge_upstream_attempts_total", upstream="mailmodo", outcome="delivered") == 1
    )
    assert moved("ctmm_bridge_upstream_attempts_total", upstream="mailmodo", outcome="retry") == 1
    assert moved("ctmm_bridge_deliveries_total", upstream="mailmodo", outcome="delivered") == 1
    assert moved("ctmm_bridge_upstream_request_duration_seconds_count", upstream="mailmodo") == 2
    assert value(final, "ctmm_bridge_outbox_items", upstream="mailmodo", state="delivered") == 1
    assert value(final, "ctmm_bridge_outbox_items", upstream="mailmodo", state="pending") == 1


async def test_parked_identities_gauge(client: httpx.AsyncClient) -> None:
    for n, email in enumerate(["p@example.com", "p@example.com", "q@example.com"]):
        r = await client.post(
            f"/mailmodo/{MM_SECRET}/events",
            json={"event": "opened", "email": email, "event_id": f"e{n}"},
        )
        assert r.status_code == 200
    text = await scrape(client)
    assert value(text, "ctmm_bridge_parked_identities") == 2
    assert value(text, "ctmm_bridge_outbox_items", upstream="clevertap", state="parked") == 3


def test_final_states_are_the_delivery_states_an_attempt_ends_in() -> None:
    """metrics.py imports nothing from the app; this keeps its label values in step."""
    assert {State(value) for value in FINAL_STATES} == {State.DELIVERED, State.FAILED, State.DEAD}


async def test_readiness_and_heartbeat_gauges(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    """What the alert rules read: /readyz as gauges, and the newest worker heartbeat's age."""
    text = await scrape(client)
    # No worker runs in the test app: not ready, the worker check fails, no heartbeat at all.
    assert value(text, "ctmm_bridge_ready") == 0
    assert value(text, "ctmm_bridge_readiness_check", check="worker") == 0
    assert value(text, "ctmm_bridge_readiness_check", check="database") == 1
    assert value(text, "ctmm_bridge_worker_heartbeat_age_seconds") == float("inf")

    add_heartbeat(state.engine, "w1")
    text = await scrape(client)
    assert value(text, "ctmm_bridge_ready") == 1
    assert value(text, "ctmm_bridge_readiness_check", check="worker") == 1
    assert 0 <= value(text, "ctmm_bridge_worker_heartbeat_age_seconds") < 60


# --- what serve's worker child counted, added in -------------------------------------------------


def _counter(name: str, *rows: tuple[dict[str, str], float, float]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, "doc", labels=["upstream"])
    for labels, total, created in rows:
        family.add_sample(f"{name}_total", labels, total)
        family.add_sample(f"{name}_created", labels, created)
    return family


def test_a_childs_counters_are_added_to_ours_under_the_same_labels() -> None:
    ours = _counter("ctmm_bridge_x", ({"upstream": "mailmodo"}, 2.0, 100.0))
    child = _counter(
        "ctmm_bridge_x",
        ({"upstream": "mailmodo"}, 5.0, 50.0),
        ({"upstream": "clevertap"}, 1.0, 60.0),
    )
    only_child = _counter("ctmm_bridge_y", ({"upstream": "mailmodo"}, 7.0, 70.0))
    clash = GaugeMetricFamily("ctmm_bridge_z", "doc", value=3.0)
    not_a_gauge = _counter("ctmm_bridge_z", ({"upstream": "mailmodo"}, 9.0, 90.0))

    merged = {f.name: f for f in merge_families([ours, clash], [[child, only_child, not_a_gauge]])}

    got = {(s.name, s.labels.get("upstream")): s.value for s in merged["ctmm_bridge_x"].samples}
    assert got == {
        ("ctmm_bridge_x_total", "mailmodo"): 7.0,  # summed
        ("ctmm_bridge_x_created", "mailmodo"): 50.0,  # the earliest, not a sum
        ("ctmm_bridge_x_total", "clevertap"): 1.0,
        ("ctmm_bridge_x_created", "clevertap"): 60.0,
    }
    assert [s.value for s in merged["ctmm_bridge_y"].samples] == [7.0, 70.0]  # added as is
    assert merged["ctmm_bridge_z"] is clash  # another type under the name: ours stays


def test_the_exposition_with_a_child_has_each_family_once() -> None:
    """A second ``# TYPE`` line for a name would make Prometheus reject the whole scrape."""
    ATTEMPTS.labels("mailmodo", "delivered").inc()
    child = pickle.loads(pickle.dumps(bridge_families()))  # noqa: S301 (as sent up)
    ours = value(generate_latest(REGISTRY).decode(), ATTEMPTS_TOTAL, **LABELS)

    text = generate_latest(WithChildren(lambda: [child])).decode()

    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(types) == len(set(types))
    assert value(text, ATTEMPTS_TOTAL, **LABELS) == 2 * ours
    assert list(text_string_to_metric_families(text))  # it parses
