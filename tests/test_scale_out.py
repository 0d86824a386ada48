"""Scale-out guarantees with real processes on one PostgreSQL database (issue 14):

* the same CleverTap call reaching two ``serve`` replicas at the same instant is accepted
  once and recorded once as a duplicate;
* CleverTap's upload concurrency holds for the whole cluster, not per worker;
* the Mailmodo rate holds across worker processes;
* an idle worker picks new work up when it is committed (LISTEN/NOTIFY), not at its next poll.

The chaos test (kills, faults, a PostgreSQL restart) is ``tests/test_chaos.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from app.outbox.models import CallStatus, Delivery, InboundCall
from tests.cluster import (
    CT_AUTH,
    TRIGGER_PATH,
    FakeUpstreams,
    Proc,
    cluster_env,
    migrate,
    trigger_body,
)
from tests.conftest import _reset_postgres

pytestmark = pytest.mark.postgres


@pytest.fixture
def fake() -> Iterator[FakeUpstreams]:
    upstreams = FakeUpstreams()
    yield upstreams
    upstreams.close()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.kill()


@pytest.fixture
def pg(postgres_server: str) -> str:
    _reset_postgres(postgres_server)
    return postgres_server


def _start(procs: list[Proc], command: str, env: dict[str, str], log: Path) -> Proc:
    proc = Proc(command, env, log)
    procs.append(proc)
    return proc.start()


def test_the_same_call_at_two_replicas_at_once_is_accepted_once(
    pg: str, fake: FakeUpstreams, procs: list[Proc], tmp_path: Path
) -> None:
    env = cluster_env(pg, fake.url)
    migrate(env)
    a = _start(procs, "serve", env, tmp_path / "a.log")
    b = _start(procs, "serve", env, tmp_path / "b.log")
    rounds = 60

    async def fire() -> list[tuple[httpx.Response, httpx.Response]]:
        async with httpx.AsyncClient(timeout=20, auth=CT_AUTH) as client:

            async def pair(n: int) -> tuple[httpx.Response, httpx.Response]:
                body = trigger_body(f"race{n}@example.com")
                first, second = await asyncio.gather(
                    client.post(a.url + TRIGGER_PATH, json=body),
                    client.post(b.url + TRIGGER_PATH, json=body),
                )
                return first, second

            answers = []
            for start in range(0, rounds, 10):  # ten races at a time
                answers += await asyncio.gather(*(pair(n) for n in range(start, start + 10)))
            return answers

    answers = asyncio.run(fire())
    for first, second in answers:
        assert first.status_code == second.status_code == 200, (first.text, second.text)
        accepted = first.json()["accepted"] + second.json()["accepted"]
        duplicates = first.json()["duplicates"] + second.json()["duplicates"]
        assert (accepted, duplicates) == (1, 1), (first.json(), second.json())
    engine = create_engine(pg)
    try:
        with engine.connect() as conn:
            statuses = dict(
                conn.execute(
                    select(InboundCall.status, func.count()).group_by(InboundCall.status)
                ).all()
            )
            deliveries = conn.execute(select(func.count()).select_from(Delivery)).scalar_one()
    finally:
        engine.dispose()
    assert statuses == {CallStatus.ACCEPTED.value: rounds, CallStatus.DUPLICATE.value: rounds}
    assert deliveries == rounds
