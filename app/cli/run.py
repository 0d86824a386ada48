"""The commands that run the bridge: serve, worker, db upgrade, credentials, sandbox, version."""

from __future__ import annotations

import asyncio
import errno
import signal
import socket
from contextlib import suppress

import typer

from app import __version__
from app.cli.banner import banner
from app.cli.context import load_settings
from app.cli.db import database_errors, prepare
from app.db import create_db_engine
from app.logging import configure_logging
from app.runtime import tune_gc_for_serving
from app.security import load_credentials


def serve(
    host: str | None = typer.Option(None, help="Listen address (default BRIDGE_HOST)."),
    port: int | None = typer.Option(None, help="Listen port (default BRIDGE_PORT)."),
) -> None:
    """Serve the webhooks (and, by default, the delivery worker)."""
    from app.main import create_app
    from app.server import build_server

    settings = load_settings()
    if host is not None or port is not None:
        settings = settings.model_copy(
            update={"host": host or settings.host, "port": port or settings.port}
        )
    configure_logging(settings)
    if problem := port_problem(settings.host, settings.port):
        typer.secho(problem, fg="red", err=True)
        raise typer.Exit(1)
    prepare(settings)
    with database_errors(settings):
        engine = create_db_engine(settings)
        try:
            credentials = load_credentials(engine, settings)
        finally:
            engine.dispose()
    typer.echo(banner(settings, credentials))
    tune_gc_for_serving()
    server = build_server(create_app(settings, migrate=False), settings)
    server.run()
    if not server.started:
        raise typer.Exit(3)  # the app failed to start (logged); uvicorn.run exits 3 too


def port_problem(host: str, port: int) -> str | None:
    """Why ``serve`` could not listen on ``host:port`` (checked before the banner is printed,
    so a second ``serve`` fails with one line), or None."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot listen on {host}:{port}: {exc.strerror} (BRIDGE_HOST)"
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As uvicorn does: a port in TIME_WAIT after a restart is free to take.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (
                    f"port {port} on {host} is already in use (another ctmm-bridge?); "
                    "stop it or choose another with BRIDGE_PORT or --port"
                )
            return f"cannot listen on {host}:{port}: {exc.strerror} (BRIDGE_HOST / BRIDGE_PORT)"
    return None


def worker() -> None:
    """Run delivery workers only (as many processes as you like on PostgreSQL)."""
    from app.worker.build import build_runner

    settings = load_settings()
    configure_logging(settings)
    if settings.worker_metrics_port:
        from prometheus_client import start_http_server

        # What this worker counted (deliveries, attempts, uploads, consent); the outbox gauges
        # are on every API replica's /metrics.
        host, port = settings.host, settings.worker_metrics_port
        try:
            start_http_server(port, addr=host)
        except OSError as exc:
            typer.secho(
                f"cannot serve worker metrics on {host}:{port}: {exc.strerror} "
                "(BRIDGE_WORKER_METRICS_PORT / BRIDGE_HOST)",
                fg="red",
                err=True,
            )
            raise typer.Exit(1) from None
        typer.echo(f"worker metrics on http://{host}:{port}/metrics")

    prepare(settings)

    async def main() -> None:
        engine = create_db_engine(settings)
        runner = build_runner(engine, settings, own_process=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        try:
            await runner.run(stop)
        finally:
            await runner.aclose()
            engine.dispose()

    asyncio.run(main())


def credentials() -> None:
    """Print the webhook URLs and credentials to paste into CleverTap and Mailmodo, generated
    secrets in full (`serve` shows them in full only on the start that generated them)."""
    settings = load_settings()
    prepare(settings)
    with database_errors(settings):
        engine = create_db_engine(settings)
        try:
            creds = load_credentials(engine, settings)
        finally:
            engine.dispose()
    typer.echo(banner(settings, creds, reveal=True))


def sandbox(
    port: int | None = typer.Option(None, help="Bridge port (default BRIDGE_PORT, else free)."),
    mailmodo_port: int = typer.Option(8081, help="Fake Mailmodo port (else a free one)."),
    clevertap_port: int = typer.Option(8082, help="Fake CleverTap port (else a free one)."),
    mailmojo_port: int = typer.Option(8083, help="Fake Mailmojo port (else a free one)."),
) -> None:
    """Try the bridge with fake CleverTap, Mailmodo and Mailmojo APIs on loopback: no accounts
    needed."""
    from app.sandbox.service import run_sandbox

    run_sandbox(
        load_settings(),
        bridge_port=port,
        mailmodo_port=mailmodo_port,
        clevertap_port=clevertap_port,
        mailmojo_port=mailmojo_port,
    )


def version() -> None:
    """Print the version."""
    typer.echo(__version__)
