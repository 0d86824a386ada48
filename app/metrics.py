"""Prometheus counters and histograms, and the ``observe_*`` helpers that feed them.

They are per process (Prometheus sums them across replicas). This module imports nothing from
the app, so the hot path (inbound, writer) and the worker can count without pulling in the
database; the outbox gauges, read from the database at scrape time, are in
``app.health.metrics``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.metrics_core import Metric

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


# -- counters of serve's child processes ---------------------------------------------------------

#: The families a child process (``serve``'s worker) sends up: the bridge's own, not the
#: ``process_*`` / ``python_*`` ones, which describe that process and would not add up.
FAMILY_PREFIX = "ctmm_bridge_"


def bridge_families() -> list[Metric]:
    """This process's ``ctmm_bridge_*`` families, as a child sends them to ``serve``'s API."""
    return [family for family in REGISTRY.collect() if family.name.startswith(FAMILY_PREFIX)]


def merge_families(own: Iterable[Metric], children: Iterable[Sequence[Metric]]) -> list[Metric]:
    """``own`` families with the children's added in: one family per name (a second
    ``# TYPE`` line would make the scrape fail), each sample the sum of the processes' values
    under the same labels, except ``_created`` (the earliest). Families only a child has are
    added as they are."""
    merged: dict[str, Metric] = {}
    for family in own:
        merged[family.name] = family
    for families in children:
        for family in families:
            mine = merged.get(family.name)
            if mine is None:
                merged[family.name] = family
                continue
            if mine.type != family.type:
                continue  # not the same metric after all: keep ours
            merged[family.name] = _summed(mine, family)
    return list(merged.values())


def _summed(first: Metric, second: Metric) -> Metric:
    family = Metric(first.name, first.documentation, first.type, first.unit)
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for sample in (*first.samples, *second.samples):
        key = (sample.name, tuple(sorted(sample.labels.items())))
        if key not in values:
            values[key] = sample.value
        elif sample.name.endswith("_created"):
            values[key] = min(values[key], sample.value)
        else:
            values[key] += sample.value
    for (name, labels), value in values.items():
        family.add_sample(name, dict(labels), value)
    return family


class WithChildren:
    """The default registry with what ``serve``'s child processes counted added in (their
    counters live in their own memory): what ``/metrics`` renders."""

    def __init__(self, children: Callable[[], Iterable[Sequence[Metric]]]) -> None:
        self._children = children

    def collect(self) -> list[Metric]:
        return merge_families(REGISTRY.collect(), self._children())
