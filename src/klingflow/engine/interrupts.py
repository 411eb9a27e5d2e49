"""Stopping when told: Ctrl-C (SIGINT), SIGTERM, a cancelled flow run, without losing a paid clip.

A signal is process-wide, so the stop request is too (:data:`STOP`): every run of the process
reads it. :func:`stop_on_signals` installs klingflow's handlers for SIGINT and SIGTERM for as
long as a run lasts (main thread only; the handlers it replaced are put back after, so Prefect's
own SIGTERM bridge is restored when a flow run's engine work is over). The first signal asks
the runs to stop; a second one exits at once (``os._exit``), which is safe for the money: every
journal write is an atomic rename, and a request id is journaled before it is polled.

What "stop" means for the runner (:mod:`~klingflow.engine.runner`): no new submit leaves (steps
not yet submitted are cancelled where they wait), a submit already on the wire gets a few seconds
for its answer so its request id is journaled ``submitted`` rather than left ``interrupted``,
requests already accepted at fal stay journaled and are *not* cancelled (fal bills work in
progress, and a re-run or ``klingflow recover`` collects them without paying again), and each
unfinished step execution becomes an ``interrupted`` ledger row. With ``cancel_queued`` the
requests still waiting in fal's queue (``IN_QUEUE``) are cancelled, which costs nothing.

Python's own ``KeyboardInterrupt`` cannot do this: asyncio turns the first Ctrl-C into a
cancellation of the main task, which Prefect's flow engine takes for a crash of the flow, and a
step cancelled in the middle of a submit leaves its outcome unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = ["STOP", "OpenRequest", "StopRequest", "finish_despite_stop", "stop_on_signals"]

T = TypeVar("T")

SUBMIT_ANSWER_GRACE = 5.0
"""Seconds a submit already on the wire may take to answer after a stop (fal answers in well under
one), so its request id is journaled and the re-run polls it instead of asking fal's history."""


@dataclass(frozen=True)
class OpenRequest:
    """A request fal accepted that this run has not stored yet: what a stop leaves running at fal."""

    label: str
    endpoint: str
    request_id: str
    key: str


@dataclass
class StopRequest:
    """The process's stop request: which signal asked (None: nobody yet), and who is waiting for it."""

    signum: int | None = None
    _waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def request(self, signum: int = signal.SIGINT) -> None:
        """Ask every run of this process to stop (safe from a signal handler or another thread)."""
        with self._lock:
            self.signum = signum
            waiters = list(self._waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits there
                loop.call_soon_threadsafe(event.set)

    def reset(self) -> None:
        """A new command or call starts: an earlier stop does not stop it."""
        with self._lock:
            self.signum = None

    async def wait(self) -> None:
        """Return once a stop is requested."""
        event = asyncio.Event()
        entry = (asyncio.get_running_loop(), event)
        with self._lock:
            if self.signum is not None:
                return
            self._waiters.append(entry)
        try:
            await event.wait()
        finally:
            with self._lock:
                self._waiters.remove(entry)


STOP = StopRequest()
"""The one stop request of this process."""

_installed = 0


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest = STOP) -> Iterator[None]:
    """SIGINT and SIGTERM ask ``stop`` while the block runs; a second one exits at once.

    The outermost use resets ``stop`` (a new command starts), nested uses (the CLI's, then the
    engine's inside a Prefect flow run, which replaces Prefect's SIGTERM bridge for the run's
    duration) keep it. Outside the main thread nothing is installed: Python delivers signals to
    the main thread only, where the outer layer's handler already asks the same ``stop``.
    """
    global _installed
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        if stop.requested:
            os.write(
                2,
                b"\nklingflow: second interrupt: exiting now. The journal is intact: run the same "
                b"command again (or `klingflow recover`) to collect what fal finishes.\n",
            )
            os._exit(128 + signum)
        stop.request(signum)

    if _installed == 0:
        stop.reset()
    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    _installed += 1
    try:
        yield
    finally:
        _installed -= 1
        for signum, old in previous.items():
            signal.signal(signum, old)


async def finish_despite_stop(awaitable: Awaitable[T]) -> T:
    """Await ``awaitable``; if this task is cancelled meanwhile, give it a short grace to finish first.

    For a submit on the wire: its answer (the request id) is worth waiting a moment for, since
    without it the next run must ask fal's request history whether it was accepted.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(task), SUBMIT_ANSWER_GRACE)
        raise
