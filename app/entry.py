"""The ``ctmm-bridge`` console script's entry point, apart from the CLI on purpose.

Where ``serve`` has no fork server to start its ingest writer and worker from (``spawn``:
Windows; ``app.children``), multiprocessing re-runs the parent's main file in each child: for
the console script, its ``from app.entry import main``. Were that ``app.cli``, every child
start would load Typer and every command's modules (~0.2 s of CPU, at each restart too); this
module loads the CLI only when called.
"""

from __future__ import annotations


def main() -> None:
    from app.cli import main as cli_main

    cli_main()
