"""What ``serve``'s child processes (the ingest writer, the embedded worker) share: how one is
started, told apart from the shell's signals, reaped, and never left behind.

Each child is forked by a fork server (not by ``serve``, which runs threads and an event
loop), preloaded once with what the children import, with one end of a socketpair, which is
its whole link to ``serve``: the child stops when its end reads EOF, which also happens when
``serve`` dies, even by SIGKILL. The protocols spoken over the link differ
(``app.outbox.writer_process``, ``app.worker.process``); the life cycle is here.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import multiprocessing
import signal
import socket
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

import structlog

log = structlog.get_logger(__name__)

#: How long ``serve`` waits for a new child to open the database.
START_TIMEOUT = 60.0
#: Restart delays after a child dies, growing while it keeps dying.
RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
#: How long a child told to stop (or killed) is waited for, each time.
JOIN_SECONDS = 5.0


#: What every child imports, imported once by the fork server where there is one (Linux,
#: macOS): each child then starts as a fork of that warm interpreter instead of importing
#: SQLAlchemy, pydantic and the bridge again (~0.5 s of CPU per start, paid again on every
#: restart).
PRELOAD = ["app.outbox.writer_process", "app.worker.process", "app.worker.build"]


def _context() -> Any:
    """The fork server, preloaded; ``spawn`` where there is none (Windows).

    Not ``fork``: the API process runs threads and an event loop. The fork server is a fresh
    interpreter of its own, started (and preloaded) at the first child's start; it forks
    every child after that, and exits when ``serve`` does."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        return context
    return multiprocessing.get_context("spawn")  # pragma: no cover - no fork server


def restart_delay(failures: int) -> float:
    """The wait before the next start after ``failures`` starts in a row that did not last."""
    return RESTART_DELAYS[min(failures, len(RESTART_DELAYS) - 1)]


def ignore_stop_signals() -> None:
    """In the child: Ctrl-C and systemd signal the whole process group, but a child stops
    only when ``serve`` closes its link, after finishing what it was given."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread (tests)
            signal.signal(sig, signal.SIG_IGN)


class Child:
    """One child process at a time, under one name: started, reaped, killed at exit.

    ``target(sock, *args)`` runs in the child; it is looked up when ``start`` is called, so a
    test can put a stand-in in its module first.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.process: BaseProcess | None = None
        self._at_exit = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def start(self, target: Callable[..., None], *args: Any) -> socket.socket:
        """Start ``target`` with one end of a new socketpair; returns the other end.

        On failure (e.g. out of file descriptors) both ends are closed and the error raised.
        The interpreter's exit kills the child from now on unless ``stop_killing_at_exit``.
        """
        ours, theirs = socket.socketpair()
        process = _context().Process(
            target=target, args=(theirs, *args), name=self.name, daemon=True
        )
        try:
            await asyncio.to_thread(process.start)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.process = process
        if not self._at_exit:
            # Runs before multiprocessing's own exit hook, which would SIGTERM (ignored by
            # the child) and then wait for it forever.
            atexit.register(self._kill_at_exit)
            self._at_exit = True
        return ours

    async def reap(self, process: BaseProcess | None = None) -> None:
        """Wait for a child that was told to stop (or died); kill it if it does not stop in
        ``JOIN_SECONDS``. A reaped child is closed and forgotten, so it is never reaped twice."""
        process = process if process is not None else self.process
        if process is None:
            return
        if process.pid is not None:  # None: never started
            await asyncio.to_thread(process.join, JOIN_SECONDS)
            if process.is_alive():
                log.warning("child process did not stop in time; killing it", name=self.name)
                process.kill()
                await asyncio.to_thread(process.join, JOIN_SECONDS)
        if self.process is process:
            self.process = None
        with contextlib.suppress(ValueError):  # still running after the kill: leave it be
            process.close()

    def stop_killing_at_exit(self) -> None:
        """``serve`` stopped the child itself: nothing is left for the exit hook to do."""
        if self._at_exit:
            atexit.unregister(self._kill_at_exit)
            self._at_exit = False

    def _kill_at_exit(self) -> None:
        """The interpreter is exiting without a clean stop: do not leave the child behind."""
        process = self.process
        if process is not None and process.pid is not None and process.is_alive():
            process.kill()
