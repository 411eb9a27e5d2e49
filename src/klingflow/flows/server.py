"""Point this process's Prefect at klingflow's local server: the part of it that needs Prefect.

:mod:`klingflow.prefect_server` starts, finds and leases the server without importing Prefect.
Two things only Prefect knows are done here: whether the user configured a Prefect API (in the
environment, a profile or ``prefect.toml``: it always wins), and making an already imported
Prefect see the ``PREFECT_API_URL`` klingflow just set (Prefect reads its settings once).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from prefect.context import refresh_global_settings_context
from prefect.settings import get_current_settings

from klingflow.engine.waiting import record_waiting_later
from klingflow.prefect_server import LocalServer
from klingflow.prefect_server import use_local_server as _attach
from klingflow.settings import settings

__all__ = ["configured_api_url", "use_local_server"]


def configured_api_url() -> str | None:
    """The Prefect API the user configured (environment, profile, prefect.toml), not one klingflow set."""
    # the environment first: Prefect reads it once, at import, and a caller may have set it since
    url = os.environ.get("PREFECT_API_URL") or get_current_settings().api.url
    return url if url and url != settings().local_prefect_api_url else None


def use_local_server(
    home: str | Path | None = None,
    *,
    mode: str | None = None,
    echo: Callable[[str], None] | None = None,
    strict: bool = False,
    start: bool = True,
) -> LocalServer | None:
    """Make this process's flow runs report to the home's local Prefect server (started if needed).

    Does nothing and returns None when the user configured a Prefect API or chose the ephemeral
    mode (``mode="ephemeral"`` or ``KLINGFLOW_PREFECT=ephemeral``). Call it before any flow runs
    and outside any ``temporary_settings`` block; it blocks while a server starts (seconds), so an
    async caller runs it in a thread. ``echo`` (default: stderr) gets the one line saying a server
    was started, with its UI address. With ``start=False`` a server that is not running is left
    so (None). A call that starts the server also starts a detached recorder of the runs made
    while it was down (:mod:`klingflow.engine.waiting`), so none of them waits for ever.
    """
    kwargs = {"echo": echo} if echo is not None else {}
    server = _attach(configured_api_url(), home, mode=mode, strict=strict, start=start, **kwargs)
    if server is not None and get_current_settings().api.url != server.api_url:
        refresh_global_settings_context()
    if server is not None and server.started and home is None:
        record_waiting_later(echo or (lambda line: print(line, file=sys.stderr, flush=True)))
    return server
