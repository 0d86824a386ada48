"""Schemathesis over ``/openapi.json``: every route (webhooks, admin, health), with valid
credentials, valid and invalid inputs, against the real server (``app.server``) on a socket.
No answer may be a 5xx (but ``/readyz``'s 503, which is what it is for: no worker beats here).

Bounded and deterministic: a fixed number of examples per operation and mode, derandomized
(the same inputs on every run), so it costs a few seconds and a failure reproduces.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from app.main import create_app
from app.server import build_server
from tests.conftest import ADMIN_TOKEN, CT_SECRET, MM_SECRET, make_settings

EXAMPLES_PER_OPERATION = 12
HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Bridge-Secret": CT_SECRET}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Any]]]:
    """The app behind the real server in a thread of its own; its URL and OpenAPI document."""
    path: Path = tmp_path_factory.mktemp("fuzz") / "bridge.db"
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # No fsync: every refused call is stored, and durability is not what is tested here.
    cfg = make_settings(f"sqlite:///{path}", port=port, sqlite_synchronous="OFF")
    app = create_app(cfg)
    server = build_server(app, cfg, log_level="warning", handle_signals=False)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])))
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        if server.started:
            break
        threading.Event().wait(0.05)
    assert server.started, "the server did not start"
    try:
        yield url, httpx.get(f"{url}/openapi.json").json()
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def operations(spec: dict[str, Any]) -> list[Any]:
    schema = schemathesis.openapi.from_dict(spec)
    return [result.ok() for result in schema.get_all_operations()]


def test_no_input_gets_a_5xx(served: tuple[str, dict[str, Any]]) -> None:
    url, spec = served
    ops = operations(spec)
    labels = {op.label for op in ops}
    assert {"GET /healthz", "POST /clevertap/campaigns/{campaign_id}"} <= labels
    assert "POST /admin/deliveries/{delivery_id}/retry" in labels
    failures: list[str] = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for op in ops:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                failures += fuzz(client, op, mode)
    assert not failures, "\n".join(failures[:20])


def fuzz(client: httpx.Client, op: Any, mode: GenerationMode) -> list[str]:
    failures: list[str] = []

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(generation_mode=mode), real_secret=st.booleans())
    def run(case: Any, real_secret: bool) -> None:
        if real_secret and "secret" in (case.path_parameters or {}):
            case.path_parameters["secret"] = MM_SECRET  # past the 401, into the parser
        kwargs = case.as_transport_kwargs(base_url=str(client.base_url))
        kwargs["headers"] = {**(kwargs.get("headers") or {}), **HEADERS}
        for drop in ("url", "base_url"):
            kwargs.pop(drop, None)
        try:
            resp = client.request(kwargs.pop("method"), case.formatted_path, **_httpx(kwargs))
        except httpx.TransportError as exc:  # the server closed on us: also a failure
            failures.append(f"{op.label} {mode.value}: {exc!r}")
            return
        if resp.status_code >= 500 and not (op.label == "GET /readyz" and resp.status_code == 503):
            failures.append(f"{op.label} {mode.value}: {resp.status_code} {resp.text[:200]}")

    try:
        run()
    except Unsatisfiable:  # nothing to make invalid (no parameters): positive mode covers it
        assert mode is GenerationMode.NEGATIVE
    return failures


def _httpx(kwargs: dict[str, Any]) -> dict[str, Any]:
    """What schemathesis built (requests-style) as httpx arguments."""
    out: dict[str, Any] = {"headers": kwargs.get("headers"), "params": kwargs.get("params")}
    if "json" in kwargs:
        out["json"] = kwargs["json"]
    elif kwargs.get("data") is not None:
        out["content"] = kwargs["data"]
    return out
