"""``python -m app.cli``: the same as the ``ctmm-bridge`` console script."""

from app.cli import main

main()
