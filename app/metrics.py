"""Prometheus counters and histograms, and the ``observe_*`` helpers that feed them.

They are per process (Prometheus sums them across replicas). This module imports nothing from
the app, so the hot path (inbound, writer) and the worker can count without pulling in the
database; the outbox gauges, read from the database at scrape time, are in
``app.health.metrics``.
"""

from __future__ import annotations

import functools

from prometheus_client import Counter, Histogram

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

#: The ``outcome`` values of ``ctmm_bridge_deliveries_total``: the delivery states an attempt
#: can end in (``app.outbox.models.State`` values; a test keeps the two in step).
FINAL_STATES = frozenset({"delivered", "failed", "dead"})


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
    if state in FINAL_STATES:
        DELIVERIES.labels(upstream, state).inc()
    if duration_ms:
        UPSTREAM_LATENCY.labels(upstream).observe(duration_ms / 1000)
