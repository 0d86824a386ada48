"""The operator commands' text output: tables and summaries of what ``app.admin.service``
returns (``--json`` prints the same objects as JSON instead)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from app.admin.schemas import DeliveryDetail, DeliveryItem, RejectedItem, Stats
from app.outbox.models import State


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in header], *[["-" if v is None else str(v) for v in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def format_stats(s: Stats) -> str:
    states = [st.value for st in State]
    rows = [[d, *(s.counts[d].get(st, 0) for st in states)] for d in s.counts]
    rows.append(["total", *(s.totals.get(st, 0) for st in states)])
    lines = [
        _table(["deliveries", *states], rows),
        "",
        f"oldest pending: {_ago(s.oldest_pending_age_seconds)}",
        f"delivered per minute: {s.deliveries_per_minute.last_5_minutes:g} (last 5 min), "
        f"{s.deliveries_per_minute.last_60_minutes:g} (last hour)",
        f"parked: {s.parked.count} item(s) waiting for {s.parked.distinct_emails} email(s)",
    ]
    for name, up in s.upstreams.items():
        if up.paused:
            since = up.since.isoformat() if up.since else "?"
            lines.append(f"{name}: PAUSED since {since}: {up.reason}")
        else:
            lines.append(f"{name}: not paused")
    if s.workers:
        lines += [
            "",
            _table(
                ["worker", "last beat"],
                [[w.worker_id, _ago(w.age_seconds) + " ago"] for w in s.workers],
            ),
        ]
    else:
        lines.append("workers: none has reported")
    return "\n".join(lines)


def format_page(items: Sequence[DeliveryItem]) -> str:
    return _table(
        ["id", "created", "state", "operation", "target", "email", "tries", "reason"],
        [
            [
                d.id,
                d.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                d.state,
                d.operation,
                d.target,
                d.email,
                d.attempts,
                (d.reason or "")[:60],
            ]
            for d in items
        ],
    )


def format_rejected(items: Sequence[RejectedItem]) -> str:
    return _table(
        ["id", "received", "source", "route", "target", "http", "reason"],
        [
            [
                r.id,
                r.received_at.strftime("%Y-%m-%d %H:%M:%S"),
                r.source,
                r.route,
                r.target,
                r.http_status,
                (r.reason or "")[:80],
            ]
            for r in items
        ],
    )


def format_detail(d: DeliveryDetail) -> str:
    v = d.delivery
    lines = [
        f"delivery {v.id}: {v.state}",
        f"  {v.direction}  {v.upstream} {v.operation}  target {v.target or '-'}",
        f"  email {v.email or '-'}  clevertap_id {v.clevertap_id or '-'}",
        f"  created {v.created_at.isoformat()}  updated {v.updated_at.isoformat()}"
        + (f"  finished {v.finished_at.isoformat()}" if v.finished_at else ""),
        f"  attempts {v.attempts}  deferrals {v.deferrals}  next {v.next_attempt_at.isoformat()}"
        + (f"  upstream ref {v.upstream_ref}" if v.upstream_ref else ""),
        f"  reason: {d.reason or '-'}",
        f"  payload: {orjson.dumps(v.payload).decode()}",
    ]
    if d.inbound_call is not None:
        c = d.inbound_call
        lines += [
            "",
            f"inbound call {c.id}: {c.status} (HTTP {c.http_status}) {c.route} "
            f"target {c.target or '-'} at {c.received_at.isoformat()}"
            + (f"  request {c.request_id}" if c.request_id else ""),
            f"  body{' (truncated)' if c.body_truncated else ''}: {c.body[:500]}",
        ]
    lines += ["", f"attempts ({len(d.attempts)}):"]
    if not d.attempts:
        lines.append("  none yet")
    for a in d.attempts:
        lines.append(
            f"  #{a.number} {a.started_at.isoformat()}  {a.outcome}  "
            f"HTTP {a.status_code if a.status_code is not None else '-'}  "
            f"{a.duration_ms:.0f} ms" + (f"  {a.error}" if a.error else "")
        )
        if a.response_body:
            lines.append(f"     answer: {a.response_body[:300]}")
    return "\n".join(lines)
