"""``ctmm-bridge serve`` as real processes: generated secrets are printed once, when generated,
and masked on every later start; no secret reaches any log line; a taken port fails with one
line before the banner."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.config import get_settings
from app.security import masked


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(tmp_path: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env |= {
        "BRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'bridge.db'}",
        "BRIDGE_PORT": str(port),
        "BRIDGE_LOG_FORMAT": "json",
        "BRIDGE_LOG_LEVEL": "DEBUG",
        "BRIDGE_INGEST_WRITER": "thread",
        "BRIDGE_MAILMODO_API_KEY": "mm-key-configured-123",
        "BRIDGE_MAILMODO_API_URL": "http://127.0.0.1:9",  # refused: a retry is logged
        "BRIDGE_RETRY_SCHEDULE_SECONDS": "0.2,0.2",
        "BRIDGE_WORKER_POLL_SECONDS": "0.05",
        "BRIDGE_SHUTDOWN_GRACE_SECONDS": "1",
    }
    return env


def _serve(tmp_path: Path, env: dict[str, str], name: str) -> tuple[str, str]:
    """Start ``serve``, make the calls that log most (accepted, refused, a Mailmodo callback
    with its path secret, a failing delivery), stop it; its stdout and stderr."""
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"], cwd=tmp_path, env=env, stdout=o, stderr=e
        )
    try:
        url = f"http://127.0.0.1:{env['BRIDGE_PORT']}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, err.read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.1)
        secrets = _credentials(tmp_path, env)
        ct, mm = secrets["clevertap"], secrets["mailmodo"]
        email = f"ann.{name}@example.com"  # a new call each start, not a duplicate
        body = {"profiles": [{"Email": email, "ObjectId": "__a"}]}
        assert httpx.post(f"{url}/clevertap/campaigns/c1", json=body, auth=("u", ct)).is_success
        assert httpx.post(f"{url}/clevertap/campaigns/c1", json=body, auth=("u", mm)).status_code
        callback = {"event": "opened", "email": email, "clevertap_id": "__a"}
        assert httpx.post(f"{url}/mailmodo/{mm}/events", json=callback).is_success
        assert httpx.post(f"{url}/mailmodo/{ct}/events", json=callback).status_code == 401
        admin = {"Authorization": f"Bearer {secrets['admin']}"}
        assert httpx.get(f"{url}/admin/stats", headers=admin).is_success
        deadline = time.monotonic() + 10  # the delivery's retry line
        while "will retry" not in err.read_text():
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return out.read_text(), err.read_text()


def _credentials(tmp_path: Path, env: dict[str, str]) -> dict[str, str]:
    """The generated secrets, as `ctmm-bridge credentials` prints them."""
    text = subprocess.run(
        [sys.executable, "-m", "app.cli", "credentials"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    ct = text.split("password: ", 1)[1].split()[0]
    mm = text.split("/mailmodo/", 1)[1].split("/", 1)[0]
    admin = text.split("Authorization: Bearer …): ", 1)[1].split()[0]
    return {"clevertap": ct, "mailmodo": mm, "admin": admin}


def test_secrets_are_printed_once_and_never_logged(tmp_path: Path) -> None:
    env = _env(tmp_path, _free_port())
    first_out, first_err = _serve(tmp_path, env, "first")
    secrets = _credentials(tmp_path, env)
    values = [*secrets.values(), env["BRIDGE_MAILMODO_API_KEY"]]
    assert all(len(v) >= 20 for v in secrets.values())
    # The start that generated them shows them, once, on stdout (the banner).
    for name in ("clevertap", "mailmodo", "admin"):
        assert first_out.count(secrets[name]) >= 1
    second_out, second_err = _serve(tmp_path, env, "second")
    # Later starts mask them and say how to see them.
    for name in ("clevertap", "mailmodo", "admin"):
        assert masked(secrets[name]) in second_out
    assert "ctmm-bridge credentials" in second_out
    assert "WARNING: http://127.0.0.1" in second_out  # loopback: not reachable by SaaS
    # No log line of either start, and no banner after the first, carries a secret or email.
    for text in (first_err, second_out, second_err):
        for value in values:
            assert value not in text
    for text in (first_err, second_err):
        assert "ann.first@example.com" not in text
        assert "ann.second@example.com" not in text
        assert '"event":"inbound call"' in text
        assert "will retry" in text


@contextmanager
def _taken_port() -> Iterator[int]:
    """A port another program is listening on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield int(taken.getsockname()[1])


def _cli(tmp_path: Path, command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 (this interpreter, a fixed command)
        [sys.executable, "-m", "app.cli", command],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_taken_port_fails_before_the_banner(tmp_path: Path) -> None:
    with _taken_port() as port:
        result = _cli(tmp_path, "serve", _env(tmp_path, port))
    assert result.returncode == 1
    assert result.stdout == ""  # no banner
    assert result.stderr.strip().splitlines() == [
        f"port {port} on 127.0.0.1 is already in use (another ctmm-bridge?); stop it or choose "
        "another with BRIDGE_PORT or --port"
    ]
    assert not (tmp_path / "bridge.db").exists()  # nothing was migrated either


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("BRIDGE_CLEVERTAP_REGION", "mars", "BRIDGE_CLEVERTAP_REGION: unknown region 'mars'"),
        ("BRIDGE_DATABASE_URL", "mysql://u:pw@db/x", "BRIDGE_DATABASE_URL: unsupported"),
    ],
)
def test_bad_configuration_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    for name, setting in (_env(tmp_path, _free_port()) | {variable: value}).items():
        monkeypatch.setenv(name, setting)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["serve"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("configuration error: ")
    assert expected in line
    assert ":pw@" not in line


def test_a_workers_taken_metrics_port_fails_with_one_line(tmp_path: Path) -> None:
    with _taken_port() as port:
        env = _env(tmp_path, _free_port()) | {"BRIDGE_WORKER_METRICS_PORT": str(port)}
        result = _cli(tmp_path, "worker", env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"cannot serve worker metrics on 127.0.0.1:{port}: Address already in use "
        "(BRIDGE_WORKER_METRICS_PORT / BRIDGE_HOST)"
    ]
    assert not (tmp_path / "bridge.db").exists()  # it stopped before touching the database
