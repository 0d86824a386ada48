"""What the app holds while it runs, on ``app.state.bridge``; typed access for handlers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from fastapi import Request
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.outbox.counts import CountsSnapshot
from app.outbox.writer import Writer
from app.security import Credentials


class Runner(Protocol):
    """What the app does with its embedded worker (``app.worker.runner.WorkerRunner``).

    A protocol, not the class, so the routers that read this state do not import the worker
    (and through it every upstream)."""

    worker_id: str

    async def run(self, stop: asyncio.Event) -> None: ...

    async def aclose(self) -> None: ...

    def wake_threadsafe(self) -> None: ...


@dataclass(slots=True)
class BridgeState:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    credentials: Credentials
    writer: Writer
    metrics: CollectorRegistry
    #: The outbox counts every reader shares, refreshed off the request path.
    counts: CountsSnapshot
    runner: Runner | None = None
    runner_task: asyncio.Task[None] | None = None
    stop: asyncio.Event | None = None


def bridge(request: Request) -> BridgeState:
    state: BridgeState = request.app.state.bridge
    return state
