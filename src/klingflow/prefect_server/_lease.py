"""One process's use of the local Prefect server: point Prefect at it, and hold a lease while running.

The lease (``clients/<pid>``, removed at exit; a killed process is noticed by its pid) is what
keeps the supervisor's idle shutdown from stopping a server that a live run uses.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from klingflow.errors import ConfigError
from klingflow.prefect_server._manager import OWN_URL, LocalServer, ensure_server, find_server, server_paths
from klingflow.prefect_server._supervisor import Paths, proc_start
from klingflow.settings import settings

__all__ = ["use_local_server"]

Echo = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


_announced: set[str] = set()
_held: set[Path] = set()
_recent: dict[Path, tuple[float, LocalServer]] = {}
_RECHECK_AFTER = 5.0  # seconds during which a server found healthy is not asked again


def use_local_server(
    configured: str | None,
    home: str | Path | None = None,
    *,
    mode: str | None = None,
    echo: Echo | None = _stderr,
    strict: bool = False,
    start: bool = True,
) -> LocalServer | None:
    """Point this process (and its subprocesses) at ``home``'s local server, starting it if needed.

    ``configured`` is the Prefect API URL the user configured, if any: it always wins, and nothing
    is started. So does ``mode="ephemeral"`` (default: ``KLINGFLOW_PREFECT``). Otherwise sets
    ``PREFECT_API_URL`` (and ``KLINGFLOW_LOCAL_PREFECT_API_URL``, so a later call knows klingflow set
    it) in ``os.environ`` and holds a lease on the server until this process exits, so the idle
    shutdown never stops a server a live run uses. Echoes the UI address once, when it started the
    server. If the server cannot start, says so in one line and returns None (the run goes on in
    Prefect's ephemeral mode), unless ``strict``. With ``start=False`` a server that is not running
    is not started (:func:`find_server`): None is returned, silently.
    """
    if (mode or settings().prefect) == "ephemeral" or configured:
        return None
    root = server_paths(home).root
    recent = _recent.get(root)
    if (
        recent
        and time.monotonic() - recent[0] < _RECHECK_AFTER
        and os.environ.get(OWN_URL) == recent[1].api_url
    ):
        return recent[1]  # checked a moment ago (the CLI, then run_pipeline, then arun_pipeline)
    try:
        server = ensure_server(home, echo=echo) if start else find_server(home)
    except ConfigError as exc:
        if strict:
            raise
        if echo:
            echo(f"klingflow: {exc.message} (see {exc.context}); using Prefect's ephemeral mode")
        return None
    if server is None:
        return None
    os.environ["PREFECT_API_URL"] = server.api_url
    os.environ[OWN_URL] = server.api_url
    _hold(server_paths(home))
    _recent[root] = (time.monotonic(), replace(server, started=False))  # a later call started nothing
    if server.started and echo and server.url not in _announced:
        _announced.add(server.url)
        echo(f"klingflow: started a local Prefect server, UI at {server.url} (klingflow server stop)")
    return server


def _hold(paths: Paths) -> None:
    """Register this process as a client until it exits (a killed process is noticed by its pid)."""
    if paths.root in _held:
        return
    paths.clients.mkdir(exist_ok=True)
    lease = paths.clients / str(os.getpid())
    lease.write_text(proc_start(os.getpid()) or "")
    _held.add(paths.root)

    def release() -> None:
        lease.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            paths.last_used.touch()

    atexit.register(release)
