"""``ctmm-bridge``: serve, run workers, migrate, and show the credentials to paste."""

from __future__ import annotations

import asyncio
import signal
from contextlib import suppress

import typer
from sqlalchemy.engine import make_url

from app import __version__
from app.config import Settings, get_settings
from app.db import create_db_engine
from app.logging import configure_logging
from app.security import Credentials, load_credentials

cli = typer.Typer(help="ctmm-bridge: CleverTap ⇄ Mailmodo webhook bridge.", no_args_is_help=True)
db_cli = typer.Typer(help="Database commands.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")


def _safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _settings() -> Settings:
    try:
        return get_settings()
    except Exception as exc:  # pydantic's message names the bad variable
        typer.secho(f"configuration error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None


def base_url(settings: Settings) -> str:
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host  # noqa: S104
    return f"http://{host}:{settings.port}"


def banner(settings: Settings, credentials: Credentials) -> str:
    """What a newcomer pastes into CleverTap; printed on stdout, never logged."""
    base = base_url(settings)
    secret = credentials.clevertap_secrets[0]
    shown = (
        secret
        if "clevertap_webhook_secret" in credentials.generated
        else "(the first value of BRIDGE_CLEVERTAP_WEBHOOK_SECRETS)"
    )
    mm_secret = (
        credentials.mailmodo_secrets[0]
        if "mailmodo_webhook_secret" in credentials.generated
        else "<BRIDGE_MAILMODO_WEBHOOK_SECRETS>"
    )
    admin = (
        credentials.admin_token
        if "admin_token" in credentials.generated
        else "(BRIDGE_ADMIN_TOKEN)"
    )
    lines = [
        f"ctmm-bridge {__version__} on {base}   database: {_safe_url(settings.database_url)}",
        "",
        "CleverTap → Mailmodo: in CleverTap, Settings > Channels > Webhooks, a POST webhook to",
        f"  trigger a campaign   {base}/clevertap/campaigns/<MAILMODO_CAMPAIGN_ID>",
        f"  start a journey      {base}/clevertap/journeys/<MAILMODO_JOURNEY_ID>/start",
        f"  abort a journey      {base}/clevertap/journeys/<MAILMODO_JOURNEY_ID>/abort",
        f"  Authentication: Basic Authorization, user name: clevertap, password: {shown}",
        f"  (or no authentication plus the header  X-Bridge-Secret: {shown})",
        "",
        "Mailmodo → CleverTap: in a Mailmodo journey, a Webhook card (after a condition card) to",
        f"  {base}/mailmodo/{mm_secret}/events/<opened|clicked|form_submitted|bounced|"
        "unsubscribed|spam>",
        f"  form-submission webhooks and other callbacks: {base}/mailmodo/{mm_secret}/events",
        "",
        f"Admin token (Authorization: Bearer …): {admin}",
        f"Health: {base}/healthz   Readiness: {base}/readyz",
    ]
    if not (settings.clevertap_account_id and settings.clevertap_passcode):
        lines += [
            "",
            "BRIDGE_CLEVERTAP_ACCOUNT_ID / BRIDGE_CLEVERTAP_PASSCODE are not set: Mailmodo "
            "activity is stored but not uploaded until they are.",
        ]
    if not settings.mailmodo_api_key:
        lines += [
            "",
            "BRIDGE_MAILMODO_API_KEY is not set: calls are stored but not delivered until it is.",
        ]
    return "\n".join(lines)


@cli.command()
def serve(
    host: str | None = typer.Option(None, help="Listen address (default BRIDGE_HOST)."),
    port: int | None = typer.Option(None, help="Listen port (default BRIDGE_PORT)."),
) -> None:
    """Serve the webhooks (and, by default, the delivery worker)."""
    import uvicorn

    from app.main import DatabaseNotReady, create_app, prepare_database

    settings = _settings()
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
    uvicorn.run(
        create_app(settings, migrate=False),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5,
    )


@cli.command()
def worker() -> None:
    """Run delivery workers only (as many processes as you like on PostgreSQL)."""
    from app.main import DatabaseNotReady, prepare_database
    from app.worker.runner import (
        WorkerRunner,
        build_clevertap_uploader,
        build_mailmodo_deliverer,
        new_worker_id,
    )

    settings = _settings()
    configure_logging(settings)
    try:
        prepare_database(settings)
    except DatabaseNotReady as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from None

    async def main() -> None:
        engine = create_db_engine(settings)
        worker_id = new_worker_id()
        runner = WorkerRunner(
            engine=engine,
            settings=settings,
            worker_id=worker_id,
            mailmodo=build_mailmodo_deliverer(engine, settings, worker_id),
            clevertap=build_clevertap_uploader(engine, settings, worker_id),
        )
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


@cli.command()
def credentials() -> None:
    """Print the webhook URLs and credentials to paste into CleverTap and Mailmodo."""
    from app.main import prepare_database

    settings = _settings()
    prepare_database(settings)
    engine = create_db_engine(settings)
    creds = load_credentials(engine, settings)
    engine.dispose()
    typer.echo(banner(settings, creds))


@db_cli.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Apply the database migrations (run once before starting PostgreSQL replicas)."""
    from app.system.migrations import current_revision, upgrade

    settings = _settings()
    engine = create_db_engine(settings)
    try:
        upgrade(settings, engine, revision)
        typer.echo(f"database at {current_revision(engine)} ({_safe_url(settings.database_url)})")
    finally:
        engine.dispose()


@cli.command()
def sandbox(
    port: int | None = typer.Option(None, help="Bridge port (default BRIDGE_PORT, else free)."),
    mailmodo_port: int = typer.Option(8081, help="Fake Mailmodo port (else a free one)."),
    clevertap_port: int = typer.Option(8082, help="Fake CleverTap port (else a free one)."),
) -> None:
    """Try the bridge with fake CleverTap and Mailmodo APIs on loopback: no accounts needed."""
    from app.sandbox.service import run_sandbox

    run_sandbox(
        _settings(),
        bridge_port=port,
        mailmodo_port=mailmodo_port,
        clevertap_port=clevertap_port,
    )


@cli.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
