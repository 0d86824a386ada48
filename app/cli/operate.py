"""The operator commands: thin wrappers over ``app.admin.service`` (the /admin API's logic).

stats, inspect, deliveries, rejected, replay, purge, retry, cancel, resume, check.
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any

import typer

from app.admin import actions, service
from app.admin.schemas import Filters, PurgeRequest, ReplayRequest
from app.admin.service import AdminError, parse_when
from app.check import check as run_checks
from app.cli.context import admin_engine, admin_fail, load_settings
from app.cli.format import format_detail, format_page, format_rejected, format_stats
from app.outbox.models import Direction, Operation, Source, State, Upstream


def _when(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_when(value)
    except AdminError as exc:
        admin_fail(exc)


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
UpstreamOpt = typer.Option(None, help="mailmodo, mailmojo or clevertap.")
DirectionOpt = typer.Option(
    None, help="clevertap_to_mailmodo, mailmodo_to_clevertap or clevertap_to_mailmojo."
)
EmailOpt = typer.Option(None, help="Recipient email (case-insensitive).")
TargetOpt = typer.Option(None, help="Campaign/journey id or event name.")
OperationOpt = typer.Option(None, help="campaign.trigger, journey.start, event.upload, …")
SinceOpt = typer.Option(
    None, help="Last changed at or after: a duration ago (2h, 30m, 7d) or an ISO 8601 time."
)
UntilOpt = typer.Option(None, help="Last changed before (same forms as --since).")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of text.")


def stats(as_json: bool = JsonOpt) -> None:
    """Queue depth by direction and state, oldest pending, throughput, parked, pauses, workers.

    Exit codes: 0 done; 1 the database cannot be read; 2 bad configuration.
    """
    with admin_engine() as engine:
        result = service.stats(engine)
    typer.echo(result.model_dump_json(indent=2) if as_json else format_stats(result))


def inspect(
    delivery_id: int = typer.Argument(..., metavar="ID", help="Delivery id."),
    as_json: bool = JsonOpt,
) -> None:
    """One delivery: its inbound call, every attempt and why it is where it is.

    Exit codes: 0 found; 1 no such delivery; 2 bad usage or configuration.
    """
    with admin_engine() as engine:
        detail = service.delivery_detail(engine, delivery_id)
    typer.echo(detail.model_dump_json(indent=2) if as_json else format_detail(detail))


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
    spec = Filters(
        **_filters(state, upstream, direction, email, target, operation),
        updated_after=_when(since),
        updated_before=_when(until),
    )
    with admin_engine() as engine:
        page = service.list_deliveries(engine, spec, limit=limit, cursor=cursor)
    if as_json:
        typer.echo(page.model_dump_json(indent=2))
        return
    if not page.items:
        typer.echo("no deliveries match")
        return
    typer.echo(format_page(page.items))
    if page.next_cursor:
        typer.echo(f"\nmore: --cursor {page.next_cursor}")


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
    with admin_engine() as engine:
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
    typer.echo(format_rejected(page.items) if page.items else "no rejected calls")
    if page.next_cursor:
        typer.echo(f"\nmore: --cursor {page.next_cursor}")


def replay(
    state: list[State] | None = typer.Option(
        None,
        "--state",
        help="Repeatable; without it, failed and dead (a time range is then required).",
        show_default=False,
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
    request = ReplayRequest(
        **_filters(state, upstream, direction, email, target, operation),
        updated_after=_when(since),
        updated_before=_when(until),
        dry_run=dry_run,
    )
    with admin_engine() as engine:
        plan = actions.plan_replay(engine, request)
        if dry_run or not plan.matched:
            typer.echo(
                f"{plan.matched} deliveries would be replayed (dry run)"
                if dry_run
                else "nothing to replay"
            )
            return
        with typer.progressbar(length=plan.matched, label="replaying", file=sys.stderr) as bar:
            result = actions.run_replay(engine, plan, progress=bar.update)
    skipped = result.matched - result.replayed
    typer.echo(
        f"replayed {result.replayed} deliveries"
        + (f" ({skipped} in flight or changed meanwhile, left alone)" if skipped else "")
    )


def purge(
    older_than: str = typer.Option(
        ..., help="Age of the last change: 30d, 12h, 90m, 3600s.", show_default=False
    ),
    state: list[State] | None = typer.Option(
        None,
        "--state",
        help="Repeatable; default delivered, failed, dead, cancelled, dropped (pending items "
        "are refused: cancel them first).",
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
    unless the purge is narrowed by what the items are (--upstream, --email, …; --state
    alone does not narrow it) or --keep-calls is given.

    Exit codes: 0 done (also when nothing matched); 1 database error; 2 bad usage or config.
    """
    request = PurgeRequest(
        older_than=older_than,
        **_filters(state, upstream, direction, email, target, operation),
        include_calls=not keep_calls,
        dry_run=dry_run,
    )
    with admin_engine() as engine:
        plan = actions.plan_purge(engine, request)
        if dry_run:
            typer.echo(
                f"{plan.matched} deliveries and {plan.calls} inbound calls older than "
                f"{plan.cutoff.isoformat()} would be deleted (dry run)"
            )
            return
        total = plan.matched + plan.calls
        with typer.progressbar(length=total, label="purging", file=sys.stderr) as bar:
            result = actions.run_purge(engine, plan, progress=bar.update)
    typer.echo(f"deleted {result.deleted} deliveries and {result.calls_deleted} inbound calls")


def retry(
    delivery_id: int = typer.Argument(..., metavar="ID", help="Delivery id."),
    force: bool = typer.Option(False, "--force", help="Also re-send a delivered item."),
) -> None:
    """Send one delivery again, due now, with its attempts reset to 0.

    Exit codes: 0 done; 1 no such delivery, or its state does not allow it; 2 bad usage.
    """
    with admin_engine() as engine:
        result = actions.retry_delivery(engine, delivery_id, force=force)
    typer.echo(f"delivery {result.id}: {result.previous_state} → {result.state}")


def cancel(delivery_id: int = typer.Argument(..., metavar="ID", help="Delivery id.")) -> None:
    """Cancel a pending or parked delivery.

    Exit codes: 0 done; 1 no such delivery, or it has finished; 2 bad usage.
    """
    with admin_engine() as engine:
        result = actions.cancel_delivery(engine, delivery_id)
    typer.echo(f"delivery {result.id}: {result.previous_state} → {result.state}")


def resume(
    upstream: Upstream = typer.Argument(..., help="mailmodo, mailmojo or clevertap."),
) -> None:
    """Clear the pause of an upstream whose credentials were rejected (once they are fixed).

    Exit codes: 0 done (also when it was not paused); 1 database error; 2 bad usage.
    """
    with admin_engine() as engine:
        result = actions.resume_upstream(engine, upstream)
    typer.echo(result.detail)


def check(
    timeout: float = typer.Option(10.0, min=0.1, help="Seconds to wait for each upstream."),
) -> None:
    """Validate the configuration and make one cheap authenticated call to each upstream.

    Says in plain words what is wrong: a bad key, a wrong region, an unreachable host.

    Exit codes: 0 every check passed (warnings allowed); 1 a check failed; 2 bad configuration.
    """
    results = run_checks(load_settings(), timeout=timeout)
    colours = {"ok": "green", "warn": "yellow", "fail": "red"}
    for result in results:
        mark = typer.style(f"{result.status:<4}", fg=colours[result.status], bold=True)
        typer.echo(f"{mark}  {result.name}: {result.message}")
    if any(r.status == "fail" for r in results):
        raise typer.Exit(1)
