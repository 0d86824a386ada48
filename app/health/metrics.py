"""The outbox gauges of ``/metrics``: depth, lag, parked identities and pauses.

Read from the database at scrape time, so every replica reports the same, global values.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from app.clock import utcnow
from app.db import read_only
from app.outbox import count_repository
from app.outbox.models import Delivery, State, Upstream
from app.system.models import UpstreamState

#: Every upstream gets its series, at 0 when it has nothing.
UPSTREAM_NAMES = tuple(u.value for u in Upstream)


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
            counts = count_repository.counts_by_upstream_and_state(conn)
            oldest_rows = count_repository.oldest_pending_by_upstream(conn)
            parked_emails = conn.execute(
                select(func.count(func.distinct(Delivery.email))).where(
                    Delivery.state == State.PARKED.value
                )
            ).scalar_one()
            pauses = conn.execute(select(UpstreamState.upstream, UpstreamState.paused)).all()
        for (upstream, state_name), count in counts.items():
            depth.add_metric([upstream.value, state_name.value], count)
        for upstream in Upstream:
            oldest.add_metric([upstream.value], _age(now, oldest_rows.get(upstream)))
        parked.add_metric([], parked_emails)
        paused_map = {u: bool(p) for u, p in pauses}
        for name in UPSTREAM_NAMES:
            paused.add_metric([name], 1 if paused_map.get(name) else 0)
        yield from (depth, oldest, parked, paused)


def _age(now: datetime, created: datetime | None) -> float:
    if created is None:
        return 0.0
    return max(0.0, (now - created).total_seconds())


def app_registry(engine: Engine) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OutboxCollector(engine))
    return registry
