"""``ctmm-bridge``: serve, run workers, migrate, and show the credentials to paste."""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import Any, NoReturn

import typer
from sqlalchemy.engine import Engine, make_url

from app import __version__
from app.admin.service import AdminError
from app.config import Settings, get_settings
from app.db import create_db_engine
from app.logging import configure_logging
from app.outbox.models import Direction, Operation, Source, State, Upstream
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
        f"  sync contacts        {base}/clevertap/lists/<MAILMODO_LIST_NAME>/contacts",
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


#: Container allocations (net of frees) between two young-generation collections; CPython's
#: default is 700.
GC_GEN0_THRESHOLD = 50_000


def tune_gc_for_serving() -> None:
    """Collect the young generation far less often while serving.

    Under load every call in flight holds a few hundred objects for a few milliseconds. At the
    default threshold (700) young collections run every few calls, promote those short-lived
    objects, and so trigger a full collection of the whole heap every few hundred
    milliseconds: measured at 20% of the CPU time of 32 concurrent webhook calls, with pauses of
    50-120 ms that set the p99. The bridge makes almost no cyclic garbage (refcounting frees
    it), so a higher threshold costs little memory; collection still runs, only rarely.
    """
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, GC_GEN0_THRESHOLD), gen1, gen2)


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
    tune_gc_for_serving()
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


# -- operator commands: thin wrappers over app.admin.service (the /admin API's logic) ----------


def _admin_fail(exc: AdminError) -> NoReturn:
    """422 is the operator's input (2); anything else is a finding (1)."""
    typer.secho(str(exc), fg="red", err=True)
    raise typer.Exit(2 if exc.status == 422 else 1)


@contextmanager
def _admin_engine() -> Iterator[Engine]:
    """The database named by the settings (BRIDGE_DATABASE_URL)."""
    from app.admin.service import open_database

    try:
        engine = open_database(_settings())
    except AdminError as exc:
        _admin_fail(exc)
    try:
        yield engine
    except AdminError as exc:
        _admin_fail(exc)
    finally:
        engine.dispose()


def _when(value: str | None) -> datetime | None:
    from app.admin.service import parse_when

    if value is None:
        return None
    try:
        return parse_when(value)
    except AdminError as exc:
        _admin_fail(exc)


def _filters(
    state: list[State] | None,
    upstream: Upstream | None,
    direction: Direction | None,
    email: str | None,
    target: str | None,
    operation: Operation | None,
) -> dict[str, Any]:
    """The delivery filters every listing/bulk command shares, as schema fields."""
    return {
        "states": state or None,
        "upstream": upstream,
        "direction": direction,
        "email": email,
        "target": target,
        "operation": operation,
    }


StateOpt = typer.Option(None, "--state", help="Repeatable.", show_default=False)
UpstreamOpt = typer.Option(None, help="mailmodo or clevertap.")
DirectionOpt = typer.Option(None, help="clevertap_to_mailmodo or mailmodo_to_clevertap.")
EmailOpt = typer.Option(None, help="Recipient email (case-insensitive).")
TargetOpt = typer.Option(None, help="Campaign/journey id or event name.")
OperationOpt = typer.Option(None, help="campaign.trigger, journey.start, event.upload, …")
SinceOpt = typer.Option(
    None, help="Last changed at or after: a duration ago (2h, 30m, 7d) or an ISO 8601 time."
)
UntilOpt = typer.Option(None, help="Last changed before (same forms as --since).")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of text.")


@cli.command()
def stats(as_json: bool = JsonOpt) -> None:
    """Queue depth by direction and state, oldest pending, throughput, parked, pauses, workers.

    Exit codes: 0 done; 1 the database cannot be read; 2 bad configuration.
    """
    from app.admin import service

    with _admin_engine() as engine:
        result = service.stats(engine)
    typer.echo(result.model_dump_json(indent=2) if as_json else service.format_stats(result))


@cli.command()
def inspect(
    delivery_id: int = typer.Argument(..., metavar="ID", help="Delivery id."),
    as_json: bool = JsonOpt,
) -> None:
    """One delivery: its inbound call, every attempt and why it is where it is.

    Exit codes: 0 found; 1 no such delivery; 2 bad usage or configuration.
    """
    from app.admin import service

    with _admin_engine() as engine:
        detail = service.delivery_detail(engine, delivery_id)
    typer.echo(detail.model_dump_json(indent=2) if as_json else service.format_detail(detail))


@cli.command()
def deliveries(
    state: list[State] | None = StateOpt,
    upstream: Upstream | None = UpstreamOpt,
    direction: Direction | None = DirectionOpt,
    email: str | None = EmailOpt,
    target: str | None = TargetOpt,
    operation: Operation | None = OperationOpt,
    since: str | None = SinceOpt,
    until: str | None = UntilOpt,
    limit: int = typer.Option(50, min=1, max=500, help="Rows per page."),
    cursor: str | None = typer.Option(None, help="The cursor printed under the last page."),
    as_json: bool = JsonOpt,
) -> None:
    """List deliveries, newest first: what happened to this recipient's email?

    Exit codes: 0 done (also when nothing matches); 1 database error; 2 bad usage.
    """
    from app.admin import service
    from app.admin.schemas import Filters

    spec = Filters(
        **_filters(state, upstream, direction, email, target, operation),
        updated_after=_when(since),
        updated_before=_when(until),
    )
    with _admin_engine() as engine:
        page = service.list_deliveries(engine, spec, limit=limit, cursor=cursor)
    if as_json:
        typer.echo(page.model_dump_json(indent=2))
        return
    if not page.items:
        typer.echo("no deliveries match")
        return
    typer.echo(service.format_page(page.items))
    if page.next_cursor:
        typer.echo(f"\nmore: --cursor {page.next_cursor}")


@cli.command()
def rejected(
    source: Source | None = typer.Option(None, help="clevertap or mailmodo."),
    since: str | None = typer.Option(None, help="Received at or after (2h, or ISO 8601)."),
    until: str | None = typer.Option(None, help="Received before."),
    limit: int = typer.Option(50, min=1, max=500, help="Rows per page."),
    cursor: str | None = typer.Option(None, help="The cursor printed under the last page."),
    as_json: bool = JsonOpt,
) -> None:
    """Inbound calls that were refused, with the reason, newest first.

    Exit codes: 0 done (also when there are none); 1 database error; 2 bad usage.
    """
    from app.admin import service

    with _admin_engine() as engine:
        page = service.list_rejected(
            engine,
            source=source.value if source else None,
            received_after=_when(since),
            received_before=_when(until),
            limit=limit,
            cursor=cursor,
        )
    if as_json:
        typer.echo(page.model_dump_json(indent=2))
        return
    typer.echo(service.format_rejected(page.items) if page.items else "no rejected calls")
    if page.next_cursor:
        typer.echo(f"\nmore: --cursor {page.next_cursor}")


@cli.command()
def replay(
    state: list[State] | None = typer.Option(
        None, "--state", help="Repeatable; default failed and dead.", show_default=False
    ),
    upstream: Upstream | None = UpstreamOpt,
    direction: Direction | None = DirectionOpt,
    email: str | None = EmailOpt,
    target: str | None = TargetOpt,
    operation: Operation | None = OperationOpt,
    since: str | None = SinceOpt,
    until: str | None = UntilOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Only say how many would go."),
) -> None:
    """Send matching deliveries again, due now, with their attempts reset to 0.

    Give --state or a time range (--since/--until), so nothing is replayed by accident.
    Items a worker is sending at that moment are left alone.

    Everything that died in the last two hours: ctmm-bridge replay --state dead --since 2h

    Exit codes: 0 done (also when nothing matched); 1 database error; 2 bad usage or config.
    """
    from app.admin import service
    from app.admin.schemas import ReplayRequest

    request = ReplayRequest(
        **_filters(state, upstream, direction, email, target, operation),
        updated_after=_when(since),
        updated_before=_when(until),
        dry_run=dry_run,
    )
    with _admin_engine() as engine:
        plan = service.plan_replay(engine, request)
        if dry_run or not plan.matched:
            typer.echo(
                f"{plan.matched} deliveries would be replayed (dry run)"
                if dry_run
                else "nothing to replay"
            )
            return
        with typer.progressbar(length=plan.matched, label="replaying", file=sys.stderr) as bar:
            result = service.run_replay(engine, plan, progress=bar.update)
    skipped = result.matched - result.replayed
    typer.echo(
        f"replayed {result.replayed} deliveries"
        + (f" ({skipped} in flight or changed meanwhile, left alone)" if skipped else "")
    )


@cli.command()
def purge(
    older_than: str = typer.Option(
        ..., help="Age of the last change: 30d, 12h, 90m, 3600s.", show_default=False
    ),
    state: list[State] | None = typer.Option(
        None,
        "--state",
        help="Repeatable; default delivered, failed, dead, cancelled, dropped.",
        show_default=False,
    ),
    upstream: Upstream | None = UpstreamOpt,
    direction: Direction | None = DirectionOpt,
    email: str | None = EmailOpt,
    target: str | None = TargetOpt,
    operation: Operation | None = OperationOpt,
    keep_calls: bool = typer.Option(
        False, "--keep-calls", help="Keep rejected, duplicate and test calls."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only say how many would go."),
) -> None:
    """Delete finished deliveries (and their attempts) older than --older-than, in batches.

    Inbound calls left without any delivery go too.
    So do rejected, duplicate and test calls older than the cut,
    unless the purge is narrowed (--upstream, --email, …) or --keep-calls is given.

    Exit codes: 0 done (also when nothing matched); 1 database error; 2 bad usage or config.
    """
    from app.admin import service
    from app.admin.schemas import PurgeRequest

    request = PurgeRequest(
        older_than=older_than,
        **_filters(state, upstream, direction, email, target, operation),
        include_calls=not keep_calls,
        dry_run=dry_run,
    )
    with _admin_engine() as engine:
        plan = service.plan_purge(engine, request)
        if dry_run:
            typer.echo(
                f"{plan.matched} deliveries and {plan.calls} inbound calls older than "
                f"{plan.cutoff.isoformat()} would be deleted (dry run)"
            )
            return
        total = plan.matched + plan.calls
        with typer.progressbar(length=total, label="purging", file=sys.stderr) as bar:
            result = service.run_purge(engine, plan, progress=bar.update)
    typer.echo(f"deleted {result.deleted} deliveries and {result.calls_deleted} inbound calls")


@cli.command()
def retry(
    delivery_id: int = typer.Argument(..., metavar="ID", help="Delivery id."),
    force: bool = typer.Option(False, "--force", help="Also re-send a delivered item."),
) -> None:
    """Send one delivery again, due now, with its attempts reset to 0.

    Exit codes: 0 done; 1 no such delivery, or its state does not allow it; 2 bad usage.
    """
    from app.admin import service

    with _admin_engine() as engine:
        result = service.retry_delivery(engine, delivery_id, force=force)
    typer.echo(f"delivery {result.id}: {result.previous_state} → {result.state}")


@cli.command()
def cancel(delivery_id: int = typer.Argument(..., metavar="ID", help="Delivery id.")) -> None:
    """Cancel a pending or parked delivery.

    Exit codes: 0 done; 1 no such delivery, or it has finished; 2 bad usage.
    """
    from app.admin import service

    with _admin_engine() as engine:
        result = service.cancel_delivery(engine, delivery_id)
    typer.echo(f"delivery {result.id}: {result.previous_state} → {result.state}")


@cli.command()
def resume(upstream: Upstream = typer.Argument(..., help="mailmodo or clevertap.")) -> None:
    """Clear the pause of an upstream whose credentials were rejected (once they are fixed).

    Exit codes: 0 done (also when it was not paused); 1 database error; 2 bad usage.
    """
    from app.admin import service

    with _admin_engine() as engine:
        result = service.resume_upstream(engine, upstream)
    typer.echo(result.detail)


@cli.command()
def check(
    timeout: float = typer.Option(10.0, min=0.1, help="Seconds to wait for each upstream."),
) -> None:
    """Validate the configuration and make one cheap authenticated call to each upstream.

    Says in plain words what is wrong: a bad key, a wrong region, an unreachable host.

    Exit codes: 0 every check passed (warnings allowed); 1 a check failed; 2 bad configuration.
    """
    from app.check import check as run_checks

    results = run_checks(_settings(), timeout=timeout)
    colours = {"ok": "green", "warn": "yellow", "fail": "red"}
    for result in results:
        mark = typer.style(f"{result.status:<4}", fg=colours[result.status], bold=True)
        typer.echo(f"{mark}  {result.name}: {result.message}")
    if any(r.status == "fail" for r in results):
        raise typer.Exit(1)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
