"""A child process's life (``app.children``), with real spawned processes: it runs until its
link reads EOF, a child that will not stop is killed, the interpreter's exit kills one left
behind, and a failed start leaks no socket."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from app import children
from app.children import RESTART_DELAYS, Child, ignore_stop_signals, restart_delay


def echo_until_eof(sock: socket.socket) -> None:
    """Says its pid, then waits for EOF (spawned by name, so it lives at module level)."""
    ignore_stop_signals()
    sock.sendall(f"{os.getpid()}\n".encode())
    while sock.recv(64):
        pass


def never_stops(sock: socket.socket) -> None:
    """Says its pid, then ignores its link and every stop signal but SIGKILL."""
    ignore_stop_signals()
    sock.sendall(f"{os.getpid()}\n".encode())
    while True:
        time.sleep(1)


def _pid(sock: socket.socket) -> int:
    sock.settimeout(30)
    return int(sock.recv(64).decode().strip())


def test_restart_delays_grow_then_stay_at_the_last() -> None:
    assert [restart_delay(n) for n in range(3)] == list(RESTART_DELAYS[:3])
    assert restart_delay(100) == RESTART_DELAYS[-1]


async def test_a_child_runs_until_its_link_reads_eof_and_is_reaped_once() -> None:
    child = Child("test-echo")
    ours = await child.start(echo_until_eof)
    try:
        pid = _pid(ours)
        assert child.pid == pid
        os.kill(pid, signal.SIGTERM)  # the group's signals do not stop it
        await asyncio.sleep(0.2)
        assert child.process is not None
        assert child.process.is_alive()
        ours.shutdown(socket.SHUT_WR)
        await child.reap()
        assert child.process is None
        await child.reap()  # nothing left to reap: no error
    finally:
        ours.close()
        child.stop_killing_at_exit()


async def test_a_child_that_does_not_stop_is_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(children, "JOIN_SECONDS", 0.3)
    child = Child("test-stubborn")
    ours = await child.start(never_stops)
    try:
        _pid(ours)
        process = child.process
        assert process is not None
        ours.shutdown(socket.SHUT_WR)
        start = time.monotonic()
        await child.reap()
        assert time.monotonic() - start < 5
        with pytest.raises(ValueError, match="closed"):  # reaped processes are closed
            process.is_alive()
    finally:
        ours.close()
        child.stop_killing_at_exit()


async def test_a_failed_start_closes_both_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[tuple[socket.socket, socket.socket]] = []
    real = socket.socketpair

    def tracked() -> tuple[socket.socket, socket.socket]:
        pair = real()
        made.append(pair)
        return pair

    def refuse(self: object) -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(children.socket, "socketpair", tracked)
    monkeypatch.setattr("multiprocessing.process.BaseProcess.start", refuse)
    child = Child("test-refused")
    with pytest.raises(OSError, match="Too many open files"):
        await child.start(echo_until_eof)
    [(ours, theirs)] = made
    assert ours.fileno() == -1
    assert theirs.fileno() == -1
    assert child.process is None


def test_the_interpreters_exit_kills_a_child_left_behind() -> None:
    """A program that starts a child and exits without stopping it leaves no orphan."""
    program = textwrap.dedent(
        """
        import asyncio
        from app.children import Child
        from tests.test_children import never_stops

        async def main():
            child = Child("test-orphan")
            ours = await child.start(never_stops)
            ours.settimeout(30)
            print(int(ours.recv(64).decode().strip()), flush=True)

        asyncio.run(main())
        """
    )
    done = subprocess.run(  # noqa: S603 - this interpreter, a fixed program
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=os.getcwd(),
    )
    pid = int(done.stdout.strip())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    pytest.fail(f"the child {pid} outlived the program that started it")
