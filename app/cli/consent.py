"""``ctmm-bridge consent EMAIL``: one person's consent state, log and status reads."""

from __future__ import annotations

import typer

from app.cli.context import admin_engine
from app.consent.view import format_person, person
from app.identity.schemas import valid_email


def consent(
    email: str = typer.Argument(..., metavar="EMAIL", help="The person's email."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """What the bridge knows of a person's email consent, what it told whom (the consent log),
    and the status reads scheduled or made.

    Exit codes: 0 done; 1 the database cannot be read; 2 bad configuration.
    """
    if valid_email(email) is None:
        raise typer.BadParameter(f"{email!r} is not an email address", param_hint="EMAIL")
    with admin_engine() as engine:
        result = person(engine, email)
    typer.echo(result.model_dump_json(indent=2) if as_json else format_person(result))
