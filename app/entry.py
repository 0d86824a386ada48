"""The ``ctmm-bridge`` console script's entry point, apart from the CLI on purpose.

``serve`` starts its ingest writer and worker with multiprocessing's *spawn*, which re-runs the
parent's main file in each child: for the console script, its ``from app.entry import main``.
Were that ``app.cli``, every child start would load Typer and every command's modules
(~0.2 s of CPU, at each restart after a crash too); this module loads the CLI only when called.
"""

from __future__ import annotations


def main() -> None:
    from app.cli import main as cli_main

    cli_main()
