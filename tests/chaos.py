"""The chaos run of issue 14, shared by ``tests/test_chaos.py`` (bounded, in CI) and
``bench/chaos.py`` (5,000 calls each direction).

Two ``serve`` replicas and three ``worker`` processes on one PostgreSQL database; a load of
CleverTap campaign calls (one Mailmodo trigger each) and Mailmodo callbacks (one CleverTap
event each), paced over ``load_seconds`` and sent like the real senders do: a call that gets
no 2xx (connection refused, 503) is sent again, to the other replica. Both upstreams answer
30 % 5xx and 10 % 429. During the load: kill -9 of a worker, kill -9 of an API replica, and a
PostgreSQL restart (when ``restart`` is given). Then: every acknowledged call is delivered,
how long after the last fault, and how many deliveries were repeated.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, func, select

from app.outbox.models import Delivery
from tests.cluster import (
    CALLBACK_PATH,
    CT_AUTH,
    TRIGGER_PATH,
    FakeUpstreams,
    Proc,
    callback_body,
    cluster_env,
    migrate,
    restart_postgres,
    trigger_body,
)

MAILMODO_CONCURRENCY = 8
UPLOAD_CONCURRENCY = 2
UPLOAD_BATCH = 50
WORKERS = 3
SENDERS = 24


@dataclass
class ChaosReport:
    calls: int
    acknowledged_triggers: int = 0
    acknowledged_events: int = 0
    lost_triggers: list[str] = field(default_factory=list)
    lost_events: list[str] = field(default_factory=list)
    repeated_triggers: int = 0
    repeated_events: int = 0
    #: the most repeats a kill or restart can explain: the deliveries that were in flight
    repeat_bound: int = 0
    faults: list[tuple[str, float]] = field(default_factory=list)
    load_seconds: float = 0.0
    delivered_after_last_fault: float | None = None
    sender_retries: int = 0
    #: why the senders sent again: status codes and transport errors
    sender_saw: Counter[str] = field(default_factory=Counter)
    upstream_requests: dict[str, int] = field(default_factory=dict)
    states: dict[str, int] = field(default_factory=dict)
    postgres_down_seconds: float | None = None
    #: the outbox rows of what was not delivered (why not)
    undelivered: list[dict[str, Any]] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [
            f"calls per direction: {self.calls}, load over {self.load_seconds:.1f} s",
            f"acknowledged: {self.acknowledged_triggers} triggers, "
            f"{self.acknowledged_events} callbacks (sender retries: {self.sender_retries}, "
            f"answers: {dict(self.sender_saw)})",
            f"faults (s after start): {', '.join(f'{n} {t:.1f}' for n, t in self.faults)}",
            f"PostgreSQL away: {self.postgres_down_seconds}",
            f"lost: {len(self.lost_triggers)} triggers, {len(self.lost_events)} events",
            f"repeated deliveries: {self.repeated_triggers} triggers, {self.repeated_events} "
            f"events (bound from in-flight work at the faults: {self.repeat_bound})",
            "all delivered "
            + (
                f"{self.delivered_after_last_fault:.1f} s after the last fault"
                if self.delivered_after_last_fault is not None
                else "NOT within the deadline"
            ),
            f"upstream answers: {dict(sorted(self.upstream_requests.items()))}",
            f"outbox states: {self.states}",
            *(f"undelivered: {row}" for row in self.undelivered),
        ]


async def _send_all(
    apis: list[Proc], calls: int, load_seconds: float, report: ChaosReport
) -> tuple[set[str], set[str]]:
    """Each call sent at its time, again and again (other replica first) until a 2xx."""
    acked_triggers: set[str] = set()
    acked_events: set[str] = set()
    rng = random.Random(14)
    # A client per replica, with a short connect timeout: a killed replica's port can keep
    # accepting into its backlog for a while (its orphaned writer child), and must not hold
    # the connections meant for the live one.
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    timeout = httpx.Timeout(10, connect=1, pool=30)
    clients = [httpx.AsyncClient(timeout=timeout, limits=limits) for _ in apis]
    try:
        start = time.monotonic()

        async def one(kind: str, n: int, due: float) -> None:
            await asyncio.sleep(max(0.0, start + due - time.monotonic()))
            name = f"{kind}{n}"
            if kind == "t":
                path, body, auth = TRIGGER_PATH, trigger_body(f"{name}@example.com"), CT_AUTH
            else:
                path, body, auth = CALLBACK_PATH, callback_body(name), None
            which = rng.randrange(len(apis))
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                api, client = apis[which % len(apis)], clients[which % len(apis)]
                try:
                    answer = await client.post(api.url + path, json=body, auth=auth)
                    report.sender_saw[str(answer.status_code)] += 1
                    if answer.status_code == 200:
                        (acked_triggers if kind == "t" else acked_events).add(
                            f"{name}@example.com" if kind == "t" else f"__{name}"
                        )
                        return
                except httpx.TransportError as exc:
                    report.sender_saw[type(exc).__name__] += 1
                report.sender_retries += 1
                which += 1
                await asyncio.sleep(0.1)

        # A fixed crew of senders takes the calls in order, each at its time: never more
        # requests in flight than connections (a queue of waiters in the HTTP pool stalls).
        step = load_seconds / calls
        todo = iter([(kind, n) for n in range(calls) for kind in ("t", "e")])

        async def sender() -> None:
            for kind, n in todo:
                await one(kind, n, n * step)

        await asyncio.gather(*(sender() for _ in range(SENDERS)))
    finally:
        for client in clients:
            await client.aclose()
    return acked_triggers, acked_events


def run_chaos(
    database_url: str,
    work: Path,
    *,
    calls: int,
    load_seconds: float,
    restart: list[str] | None,
    deadline_after_fault: float = 60.0,
    extra_env: dict[str, str] | None = None,
) -> ChaosReport:
    report = ChaosReport(calls=calls)
    # The 429s say "Retry-After: 0" (a momentary throttle). Without the header the bridge
    # backs a throttled item off 5 s, 10 s, 20 s, 40 s …: at 10 % random 429s a few items in
    # thousands draw four in a row and wait 75 s, by design; and a longer Retry-After from
    # Mailmodo holds every worker's sends back (the shared slot clock), ~10 calls/s at 10 %.
    fake = FakeUpstreams(
        fail_5xx=0.3, fail_429=0.1, delay=0.005, upload_delay=0.01, retry_after="0"
    )
    env = cluster_env(
        database_url,
        fake.url,
        BRIDGE_MAILMODO_MAX_CONCURRENCY=str(MAILMODO_CONCURRENCY),
        BRIDGE_CLEVERTAP_MAX_CONCURRENCY=str(UPLOAD_CONCURRENCY),
        BRIDGE_CLEVERTAP_BATCH_SIZE=str(UPLOAD_BATCH),
        BRIDGE_MAILMODO_TIMEOUT_SECONDS="5",
        BRIDGE_CLEVERTAP_TIMEOUT_SECONDS="5",
        BRIDGE_LEASE_SECONDS="12",
        **(extra_env or {}),
    )
    migrate(env)
    procs: list[Proc] = []
    try:
        apis = [Proc("serve", env, work / f"api{n}.log").start() for n in range(2)]
        procs += apis
        workers = [Proc("worker", env, work / f"worker{n}.log").start() for n in range(WORKERS)]
        procs += workers
        t0 = time.monotonic()
        last_fault = t0

        async def faults() -> None:
            nonlocal last_fault
            plan: list[tuple[float, str]] = [
                (0.3, "kill -9 worker"),
                (0.5, "kill -9 api"),
            ]
            if restart is not None:
                plan.append((0.7, "postgres restart"))
            for share, name in plan:
                await asyncio.sleep(max(0.0, t0 + share * load_seconds - time.monotonic()))
                if name == "kill -9 worker":
                    workers[0].kill(signal.SIGKILL)
                elif name == "kill -9 api":
                    apis[0].kill(signal.SIGKILL)
                else:
                    assert restart is not None
                    report.postgres_down_seconds = round(
                        await asyncio.to_thread(restart_postgres, restart, database_url), 2
                    )
                last_fault = time.monotonic()
                report.faults.append((name, last_fault - t0))

        async def load() -> tuple[set[str], set[str]]:
            results = await asyncio.gather(_send_all(apis, calls, load_seconds, report), faults())
            return results[0]

        acked_triggers, acked_events = asyncio.run(load())
        report.load_seconds = time.monotonic() - t0
        report.acknowledged_triggers = len(acked_triggers)
        report.acknowledged_events = len(acked_events)

        def missing() -> tuple[set[str], set[str]]:
            with fake.lock:
                got_t = {who for _, who in fake.triggers}
                got_e = {who for _, who in fake.events}
            return acked_triggers - got_t, acked_events - got_e

        limit = last_fault + deadline_after_fault
        lost_t, lost_e = missing()
        while (lost_t or lost_e) and time.monotonic() < limit:
            time.sleep(0.1)
            lost_t, lost_e = missing()
        if not lost_t and not lost_e:
            report.delivered_after_last_fault = time.monotonic() - last_fault
        report.lost_triggers = sorted(lost_t)
        report.lost_events = sorted(lost_e)
        time.sleep(0.5)  # repeats still on their way are counted too
        with fake.lock:
            triggers = Counter(who for _, who in fake.triggers)
            events = Counter(who for _, who in fake.events)
            report.upstream_requests = dict(fake.requests)
        report.repeated_triggers = sum(n - 1 for n in triggers.values())
        report.repeated_events = sum(n - 1 for n in events.values())
        in_flight = MAILMODO_CONCURRENCY + UPLOAD_CONCURRENCY * UPLOAD_BATCH  # per worker
        # the killed worker's, and at the restart every worker's unrecorded answers
        report.repeat_bound = in_flight * (1 + (WORKERS if restart is not None else 0))
        engine = create_engine(database_url)
        try:
            with engine.connect() as conn:
                if report.lost_triggers or report.lost_events:
                    report.undelivered = [
                        dict(row._mapping)
                        for row in conn.execute(
                            select(
                                Delivery.id,
                                Delivery.state,
                                Delivery.attempts,
                                Delivery.deferrals,
                                Delivery.next_attempt_at,
                                Delivery.leased_by,
                                Delivery.last_status_code,
                                Delivery.reason,
                                Delivery.updated_at,
                            ).where(Delivery.state != "delivered")
                        ).all()
                    ]
                report.states = {
                    str(state): int(count)
                    for state, count in conn.execute(
                        select(Delivery.state, func.count()).group_by(Delivery.state)
                    ).all()
                }
        finally:
            engine.dispose()
    finally:
        for proc in procs:
            proc.kill(signal.SIGKILL)
        fake.close()
    return report


def logs_of(work: Path) -> dict[str, Any]:
    """The tail of every process's log, for a failure message."""
    return {path.name: path.read_text(errors="replace")[-1500:] for path in work.glob("*.log")}
