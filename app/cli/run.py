"""The commands that run the bridge: serve, worker, db upgrade, credentials, sandbox, version."""

from __future__ import annotations

import asyncio
import signal
from contextlib import suppress

import typer

from app import __version__
from app.cli.banner import banner
from app.cli.context import load_settings
from app.db import create_db_engine, shown_url
from app.logging import configure_logging
from app.runtime import tune_gc_for_serving
from app.security import load_credentials


def serve(
    host: str | None = typer.Option(None, help="Listen address (default BRIDGE_HOST)."),
    port: int | None = typer.Option(None, help="Listen port (default BRIDGE_PORT)."),
) -> None:
    """Serve the webhooks (and, by default, the delivery worker)."""
    from app.main import DatabaseNotReady, create_app, prepare_database
    from app.server import build_server

    settings = load_settings()
    if host is not None or port is not None:
        settings = settings.model_copy(
            update={"host": host or settings.host, "port": port or settings.port}
        )
    configure_logging(settings)
    try:
        prepare_database(settings)
    except DatabaseNotReady as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from None
    engine = create_db_engine(settings)
    credentials = load_credentials(engine, settings)
    engine.dispose()
    typer.echo(banner(settings, credentials))
    tune_gc_for_serving()
    server = build_server(create_app(settings, migrate=False), settings)
    server.run()
    if not server.started:
        raise typer.Exit(3)  # the app failed to start (logged); uvicorn.run exits 3 too


def worker() -> None:
    """Run delivery workers only (as many processes as you like on PostgreSQL)."""
    from app.main import DatabaseNotReady, prepare_database
    from app.worker.build import build_runner

    settings = load_settings()
    configure_logging(settings)
    try:
        prepare_database(settings)
    except DatabaseNotReady as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from None

    async def main() -> None:
        engine = create_db_engine(settings)
        runner = build_runner(engine, settings)
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
    """Print the webhook URLs and credentials to paste into CleverTap and Mailmodo."""
    from app.main import prepare_database

    settings = load_settings()
    prepare_database(settings)
    engine = create_db_engine(settings)
    creds = load_credentials(engine, settings)
    engine.dispose()
    typer.echo(banner(settings, creds))


def db_upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Apply the database migrations (run once before starting PostgreSQL replicas)."""
    from app.system.migrations import current_revision, upgrade

    settings = load_settings()
    engine = create_db_engine(settings)
    try:
        upgrade(settings, engine, revision)
        typer.echo(f"database at {current_revision(engine)} ({shown_url(settings.database_url)})")
    finally:
        engine.dispose()


def sandbox(
    port: int | None = typer.Option(None, help="Bridge port (default BRIDGE_PORT, else free)."),
    mailmodo_port: int = typer.Option(8081, help="Fake Mailmodo port (else a free one)."),
    clevertap_port: int = typer.Option(8082, help="Fake CleverTap port (else a free one)."),
) -> None:
    """Try the bridge with fake CleverTap and Mailmodo APIs on loopback: no accounts needed."""
    from app.sandbox.service import run_sandbox

    run_sandbox(
        load_settings(),
        bridge_port=port,
        mailmodo_port=mailmodo_port,
        clevertap_port=clevertap_port,
    )


def version() -> None:
    """Print the version."""
    typer.echo(__version__)
