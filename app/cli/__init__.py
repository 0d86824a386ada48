"""``ctmm-bridge``: serve, run workers, migrate, and show the credentials to paste.

The commands live by theme (``run``: the bridge itself; ``operate``: the operator's
commands); this module only wires them into one Typer app, in the order ``--help`` lists them.
"""

from __future__ import annotations

import typer

from app.cli import consent, db, operate, run

cli = typer.Typer(help="ctmm-bridge: CleverTap ⇄ Mailmodo webhook bridge.", no_args_is_help=True)
db_cli = typer.Typer(help="Database commands.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")

cli.command()(run.serve)
cli.command()(run.worker)
cli.command()(run.credentials)
db_cli.command("upgrade")(db.db_upgrade)
db_cli.command("current")(db.db_current)
db_cli.command("backup")(db.db_backup)
cli.command()(run.sandbox)
cli.command()(run.version)

cli.command()(operate.stats)
cli.command()(operate.inspect)
cli.command()(operate.deliveries)
cli.command()(operate.rejected)
cli.command()(operate.replay)
cli.command()(operate.purge)
cli.command()(operate.retry)
cli.command()(operate.cancel)
cli.command()(operate.resume)
cli.command()(operate.check)
cli.command()(consent.consent)


def main() -> None:
    cli()
