"""The outbox gauges of ``/metrics``: depth, lag, parked identities and pauses.

Read from the database, so every replica reports the same, global values: lag, pauses and the
heartbeat at scrape time (index look-ups); depth and parked identities, which cost a count of
rows, from the process's counts snapshot (``app.outbox.counts``), with its age beside them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from app.clock import utcnow
from app.db import read_only
from app.outbox import count_repository
from app.outbox.counts import CountsSnapshot, CountsUnavailable, OutboxCounts
from app.outbox.models import Upstream
from app.system.models import UpstreamState, WorkerHeartbeat

#: Every upstream gets its series, at 0 when it has nothing.
UPSTREAM_NAMES = tuple(u.value for u in Upstream)


class OutboxCollector(Collector):
    """Outbox depth, lag, parked identities and pauses: counts from the snapshot, the rest
    read from the database per scrape."""

    def __init__(self, engine: Engine, counts: CountsSnapshot) -> None:
        self.engine = read_only(engine)
        self.counts = counts

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
        counts_age = GaugeMetricFamily(
            "ctmm_bridge_outbox_counts_age_seconds",
            "Seconds since ctmm_bridge_outbox_items and ctmm_bridge_parked_identities were "
            "counted (+Inf before the first count); recounted when older than "
            "BRIDGE_COUNTS_MAX_AGE_SECONDS.",
        )
        count_duration = GaugeMetricFamily(
            "ctmm_bridge_outbox_count_duration_seconds",
            "How long the last count of the outbox took (it grows with the rows held).",
        )
        counted: OutboxCounts | None
        try:
            counted = self.counts.get()
        except CountsUnavailable:  # none yet and counting fails: the rest is still served
            counted = None
        now = utcnow()
        with self.engine.connect() as conn:
            oldest_rows = count_repository.oldest_pending_by_upstream(conn)
            pauses = conn.execute(select(UpstreamState.upstream, UpstreamState.paused)).all()
            last_beat = conn.execute(select(func.max(WorkerHeartbeat.beat_at))).scalar()
        if counted is not None:
            for (upstream, state_name), count in counted.by_upstream_state.items():
                depth.add_metric([upstream.value, state_name.value], count)
            parked.add_metric([], counted.parked_emails)
            count_duration.add_metric([], counted.seconds)
        counts_age.add_metric([], math.inf if counted is None else counted.age_seconds(now))
        for upstream in Upstream:
            oldest.add_metric([upstream.value], _age(now, oldest_rows.get(upstream)))
        paused_map = {u: bool(p) for u, p in pauses}
        for name in UPSTREAM_NAMES:
            paused.add_metric([name], 1 if paused_map.get(name) else 0)
        heartbeat = GaugeMetricFamily(
            "ctmm_bridge_worker_heartbeat_age_seconds",
            "Seconds since the most recent worker heartbeat (+Inf when no worker is running).",
        )
        heartbeat.add_metric([], math.inf if last_beat is None else _age(now, last_beat))
        yield from (depth, oldest, parked, paused, heartbeat, counts_age, count_duration)


class ReadinessCollector(Collector):
    """``/readyz`` as gauges, so an alert can say which check fails (``app.health.service``
    computes it; this module imports nothing of the app's state)."""

    def __init__(self, readiness: Callable[[], tuple[bool, dict[str, Any]]]) -> None:
        self.readiness = readiness

    def collect(self) -> Iterable[Metric]:
        ready, checks = self.readiness()
        overall = GaugeMetricFamily(
            "ctmm_bridge_ready", "1 when /readyz answers 200 (every check passes), else 0."
        )
        overall.add_metric([], 1 if ready else 0)
        each = GaugeMetricFamily(
            "ctmm_bridge_readiness_check",
            "1 per readiness check that passes, 0 per one that fails (as /readyz lists them).",
            labels=["check"],
        )
        for name, check in checks.items():
            each.add_metric([name], 1 if check.get("ok") else 0)
        yield from (overall, each)


def _age(now: datetime, created: datetime | None) -> float:
    if created is None:
        return 0.0
    return max(0.0, (now - created).total_seconds())


def app_registry(engine: Engine, counts: CountsSnapshot) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OutboxCollector(engine, counts))
    return registry
