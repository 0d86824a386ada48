"""Prometheus metrics (``/metrics``).

Counters and histograms are per process (Prometheus sums them across replicas); the outbox
gauges are read from the database at scrape time, so every replica reports the same,
global values.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from app.clock import utcnow
from app.db import read_only
from app.outbox.models import Delivery, State
from app.outbox.transitions import TERMINAL_STATES
from app.system.models import UpstreamState

INBOUND_REQUESTS = Counter(
    "ctmm_bridge_inbound_requests_total",
    "Inbound webhook calls by route and HTTP status.",
    ["route", "status"],
)
INBOUND_ITEMS = Counter(
    "ctmm_bridge_inbound_items_total",
    "Items in inbound calls by route and result (accepted, duplicate, skipped, rejected).",
    ["route", "result"],
)
INGEST_BATCH = Histogram(
    "ctmm_bridge_ingest_commit_batch_calls",
    "Inbound calls committed together in one group-commit transaction.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
DELIVERIES = Counter(
    "ctmm_bridge_deliveries_total",
    "Deliveries that reached a final state, by upstream and outcome.",
    ["upstream", "outcome"],
)
ATTEMPTS = Counter(
    "ctmm_bridge_upstream_attempts_total",
    "Calls to an upstream per item, by upstream and outcome "
    "(delivered, failed, retry, rate_limited, auth_error).",
    ["upstream", "outcome"],
)
UPSTREAM_LATENCY = Histogram(
    "ctmm_bridge_upstream_request_duration_seconds",
    "Latency of calls to an upstream.",
    ["upstream"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
UPLOAD_BATCH = Histogram(
    "ctmm_bridge_clevertap_upload_batch_records",
    "Records per CleverTap upload request.",
    buckets=(1, 10, 50, 100, 250, 500, 750, 900, 1000),
)


def observe_inbound(route: str, status: int, result: dict[str, object] | None = None) -> None:
    _inbound_requests(route, status).inc()
    if result is None:
        if status != 401:
            _inbound_items(route, "rejected").inc()
        return
    for key, label in (
        ("accepted", "accepted"),
        ("duplicates", "duplicate"),
        ("skipped", "skipped"),
    ):
        count = result.get(key)
        if isinstance(count, int) and count:
            _inbound_items(route, label).inc(count)


# Every webhook call counts itself; looking its labelled series up once, not per call, saves
# prometheus_client's label validation on the hot path.
@functools.lru_cache(maxsize=1024)
def _inbound_requests(route: str, status: int) -> Counter:
    return INBOUND_REQUESTS.labels(route, str(status))


@functools.lru_cache(maxsize=1024)
def _inbound_items(route: str, outcome: str) -> Counter:
    return INBOUND_ITEMS.labels(route, outcome)


def observe_attempt(upstream: str, outcome: str, state: str, duration_ms: float | None) -> None:
    ATTEMPTS.labels(upstream, outcome).inc()
    # An attempt ends in delivered, failed, dead or pending: the first three are final.
    if state in TERMINAL_STATES:
        DELIVERIES.labels(upstream, state).inc()
    if duration_ms:
        UPSTREAM_LATENCY.labels(upstream).observe(duration_ms / 1000)


class OutboxCollector(Collector):
    """Outbox depth, lag, parked identities and pauses, read from the database per scrape."""

    def __init__(self, engine: Engine) -> None:
        self.engine = read_only(engine)

    def collect(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily(
            "ctmm_bridge_outbox_items",
            "Outbox items by upstream and state.",
            labels=["upstream", "state"],
        )
        oldest = GaugeMetricFamily(
            "ctmm_bridge_outbox_oldest_pending_age_seconds",
            "Age of the oldest pending item, by upstream (0 when none).",
            labels=["upstream"],
        )
        parked = GaugeMetricFamily(
            "ctmm_bridge_parked_identities",
            "Distinct emails with events parked for want of a CleverTap ID.",
        )
        paused = GaugeMetricFamily(
            "ctmm_bridge_upstream_paused",
            "1 while deliveries to an upstream are paused (credentials rejected).",
            labels=["upstream"],
        )
        now = utcnow()
        with self.engine.connect() as conn:
            counts = conn.execute(
                select(Delivery.upstream, Delivery.state, func.count()).group_by(
                    Delivery.upstream, Delivery.state
                )
            ).all()
            oldest_rows = conn.execute(
                select(Delivery.upstream, func.min(Delivery.created_at))
                .where(Delivery.state == State.PENDING.value)
                .group_by(Delivery.upstream)
            ).all()
            parked_emails = conn.execute(
                select(func.count(func.distinct(Delivery.email))).where(
                    Delivery.state == State.PARKED.value
                )
            ).scalar_one()
            pauses = conn.execute(select(UpstreamState.upstream, UpstreamState.paused)).all()
        seen = {(u, s) for u, s, _ in counts}
        for upstream in ("mailmodo", "clevertap"):
            for known in State:
                if (upstream, known.value) not in seen:
                    depth.add_metric([upstream, known.value], 0)
        for upstream, state_name, count in counts:
            depth.add_metric([upstream, state_name], count)
        ages = {u: _age(now, created) for u, created in oldest_rows}
        for upstream in ("mailmodo", "clevertap"):
            oldest.add_metric([upstream], ages.get(upstream, 0.0))
        parked.add_metric([], parked_emails)
        paused_map = {u: bool(p) for u, p in pauses}
        for upstream in ("mailmodo", "clevertap"):
            paused.add_metric([upstream], 1 if paused_map.get(upstream) else 0)
        yield from (depth, oldest, parked, paused)


def _age(now: datetime, created: datetime | None) -> float:
    if created is None:
        return 0.0
    return max(0.0, (now - created).total_seconds())


def app_registry(engine: Engine) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OutboxCollector(engine))
    return registry
