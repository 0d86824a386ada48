"""The FastAPI app factory and its lifespan: database, writer, embedded worker."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

import structlog
from fastapi import FastAPI, Request
from sqlalchemy.engine import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from app import __version__
from app.admin.router import router as admin_router
from app.config import EmbeddedWorkerMode, IngestWriterMode, Settings, get_settings
from app.console.router import router as console_router
from app.db import create_db_engine, create_session_factory
from app.errors import BridgeError, error_response, internal_error
from app.health.metrics import ReadinessCollector, app_registry
from app.health.router import router as health_router
from app.health.service import readiness
from app.inbound.router import WebhookDispatch, request_id_of
from app.inbound.routes import clevertap_router, mailmodo_router
from app.outbox.counts import CountsSnapshot, count_outbox
from app.outbox.writer import IngestWriter, Writer
from app.outbox.writer_process import ProcessWriter
from app.security import load_credentials
from app.state import BridgeState, Runner
from app.system.migrations import current_revision, head_revision, upgrade
from app.worker.build import build_runner
from app.worker.process import WorkerProcess

log = structlog.get_logger(__name__)

#: At shutdown, how long a count in flight may go on using the engine before it is disposed.
COUNT_CLOSE_SECONDS = 5.0


class DatabaseNotReady(BridgeError):
    """The PostgreSQL schema is behind: ``serve`` and ``worker`` refuse to start (503 if it
    ever reached an answer); the message says what to run."""

    def __init__(self, message: str) -> None:
        super().__init__(503, message)


class BridgeApp(FastAPI):
    """FastAPI with two things in front of its middleware stack: the request id, and the
    webhook routes served by ``WebhookDispatch`` (see there for why)."""

    dispatch: WebhookDispatch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        request_id = request_id_of(scope)
        raw_id = request_id.encode("latin-1")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-request-id", raw_id))
            await send(message)

        # X-Request-ID (or a new one) is on every log line of the call and echoed. bind + reset
        # restores what was bound before, like bound_contextvars(), at a third of its cost.
        tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            hit = self.dispatch.match(scope)
            if hit is None:
                await super().__call__(scope, receive, send_with_id)
            else:
                scope["app"] = self
                await self.dispatch.serve(*hit, scope, receive, send_with_id)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)


def prepare_database(settings: Settings) -> None:
    """SQLite is brought to head by itself; PostgreSQL must be migrated explicitly."""
    engine = create_db_engine(settings)
    try:
        if settings.is_sqlite:
            upgrade(settings, engine)
        elif current_revision(engine) != head_revision():
            raise DatabaseNotReady(
                "the PostgreSQL schema is not at the latest migration; "
                "run `ctmm-bridge db upgrade` once before starting replicas"
            )
    finally:
        engine.dispose()


async def start_writer(
    settings: Settings, engine: Engine, on_commit: Callable[[], None] | None
) -> Writer:
    if settings.ingest_writer is IngestWriterMode.PROCESS:
        process_writer = ProcessWriter(settings, on_commit=on_commit)
        await process_writer.start()
        return process_writer
    thread_writer = IngestWriter(
        engine, dedup_window_seconds=settings.dedup_window_seconds, on_commit=on_commit
    )
    thread_writer.start()
    return thread_writer


def create_app(settings: Settings | None = None, *, migrate: bool = True) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if migrate:
            await asyncio.to_thread(prepare_database, settings)
        # Under the writer process, WAL checkpoints are its thread's (app.checkpoint).
        engine = create_db_engine(settings, in_serve=True)
        credentials = await asyncio.to_thread(load_credentials, engine, settings)
        runner: Runner | None = None
        if settings.embedded_worker:
            runner = (
                WorkerProcess(settings)
                if settings.embedded_worker_mode is EmbeddedWorkerMode.PROCESS
                else build_runner(engine, settings)
            )
        writer = await start_writer(settings, engine, runner.wake_threadsafe if runner else None)
        state: BridgeState | None = None
        counts = CountsSnapshot(
            functools.partial(count_outbox, engine), settings.counts_max_age_seconds
        )
        try:
            state = BridgeState(
                settings=settings,
                engine=engine,
                session_factory=create_session_factory(engine),
                credentials=credentials,
                writer=writer,
                runner=runner,
                metrics=app_registry(engine, counts),
                counts=counts,
            )
            state.metrics.register(ReadinessCollector(functools.partial(readiness, state)))
            if runner is not None:
                state.stop = asyncio.Event()
                state.runner_task = asyncio.create_task(runner.run(state.stop), name="worker")
                # Called by app.server on SIGTERM: the worker's grace runs alongside the drain.
                app.state.begin_stop = state.stop.set
            app.state.bridge = state
            counts.start()  # in the background: the first reads wait for it, none after
            log.info(
                "bridge started",
                version=__version__,
                embedded_worker=settings.embedded_worker and settings.embedded_worker_mode.value,
                database=(settings.is_sqlite and "sqlite") or "postgresql",
            )
            yield
        finally:
            # Also when starting failed half-way: the writer (a child process) is always stopped.
            if state is not None and state.stop is not None and state.runner_task is not None:
                state.stop.set()
                with suppress(Exception):
                    await asyncio.wait_for(state.runner_task, settings.shutdown_grace_seconds + 15)
            await writer.aclose()
            if runner is not None:
                await runner.aclose()
            await asyncio.to_thread(counts.close, COUNT_CLOSE_SECONDS)
            engine.dispose()
            log.info("bridge stopped")

    app = BridgeApp(
        title="ctmm-bridge",
        version=__version__,
        summary="Durable two-way webhook bridge between CleverTap and Mailmodo",
        lifespan=lifespan,
        # A path with a trailing slash is not redirected: a webhook sender following the
        # redirect would resend its secret to a URL made from the Host header, over plain
        # HTTP behind a TLS proxy. Only the console page, typed by people, has its own.
        redirect_slashes=False,
    )
    app.include_router(health_router)
    app.include_router(clevertap_router)
    app.include_router(mailmodo_router)
    app.include_router(admin_router)
    app.include_router(console_router)
    app.dispatch = WebhookDispatch([clevertap_router, mailmodo_router])

    @app.exception_handler(BridgeError)
    async def bridge_error(_request: Request, exc: BridgeError) -> Response:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, str(exc.detail), None, headers)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", error=type(exc).__name__)
        return internal_error(exc)

    return app
