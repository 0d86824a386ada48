"""CPU cost of the per-call log line (``inbound call``) on the ingest hot path.

Configures logging as ``serve`` does (JSON, INFO, the redactor), writes to /dev/null (a real
stderr would add one write syscall per line, as a pipe to a log collector does), and times the
line with the call's request id bound, as ``BridgeApp`` binds it. CPU time per line, so other
processes on a shared machine do not inflate it.

    .venv/bin/python bench/log_line.py            # 200,000 lines, best of 5 rounds
"""

from __future__ import annotations

import os
import sys
import time

import structlog

from app.config import Settings
from app.inbound.service import _log_accepted
from app.logging import configure_logging

LINES = int(os.environ.get("BENCH_LINES", "200000"))
ROUNDS = 5
ANSWER = {"accepted": 1, "duplicates": 0, "skipped": 0, "ids": [1]}


def per_line(level: str) -> float:
    configure_logging(
        Settings(
            _env_file=None,  # type: ignore[call-arg]
            log_format="json",
            log_level=level,
            clevertap_webhook_secrets=["a-secret-of-the-bridge"],
            mailmodo_webhook_secrets=["another-secret"],
            admin_token="the-admin-token",
            mailmodo_api_key="mm-api-key-value",
        )
    )
    best = float("inf")
    for _ in range(ROUNDS):
        tokens = structlog.contextvars.bind_contextvars(request_id="9f86d081884c7d65")
        start = time.process_time()
        for _ in range(LINES):
            _log_accepted("clevertap.campaign", ANSWER)
        best = min(best, (time.process_time() - start) / LINES)
        structlog.contextvars.reset_contextvars(**tokens)
    return best


def main() -> None:
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the loggers print here
    off = per_line("WARNING")
    on = per_line("INFO")
    sys.stdout.write(
        f"per call: {on * 1e6:.2f} µs CPU with the line at INFO, {off * 1e6:.2f} µs with "
        f"BRIDGE_LOG_LEVEL=WARNING (the line filtered out); {LINES} lines, best of {ROUNDS}\n"
    )


if __name__ == "__main__":
    main()
