"""``klingflow server start | status | stop``: the local Prefect server runs share.

``status`` and ``stop`` never import Prefect (:mod:`klingflow.prefect_server` is files, signals
and one HTTP health check), so they answer at once; ``start`` asks Prefect whether a Prefect API
is configured, since a configured one wins over the local server, and records the runs that wait
for the server (:mod:`klingflow.engine.waiting`).
"""

from __future__ import annotations

import typer

from klingflow.cli._errors import friendly_errors, out, stderr

__all__ = ["NOT_RUNNING_EXIT", "server_app"]

server_app = typer.Typer(
    help="The local Prefect server klingflow runs share (UI, flow and task-run history).",
    no_args_is_help=True,
)

NOT_RUNNING_EXIT = 3
"""``klingflow server status``'s exit code when no server runs (like ``systemctl status``)."""


def _say(line: str) -> None:
    stderr().print(line, markup=False, highlight=False)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@server_app.command("start")
@friendly_errors
def start() -> None:
    """Start the local Prefect server in the background (or find the running one); print its UI address.

    Then records, as flow runs, the fully cached runs made while it was down (they wait for it).
    """
    from klingflow.engine.waiting import waiting_runs
    from klingflow.flows.server import configured_api_url
    from klingflow.prefect_server import ensure_server
    from klingflow.settings import settings

    configured = configured_api_url()
    if configured:
        _say(f"a Prefect API is configured ({configured}): runs use it, so no local server was started")
        return
    if settings().prefect == "ephemeral":
        _say("note: KLINGFLOW_PREFECT=ephemeral is set, so runs will not use this server until it is unset")
    server = ensure_server(echo=_say)
    verb = "started" if server.started else "already running"
    _say(f"local Prefect server {verb} (pid {server.pid}, prefect {server.version}); API {server.api_url}")
    waiting = waiting_runs()
    if waiting:
        from klingflow.flows.record import record

        _say(f"recording {len(waiting)} run(s) made while the server was down")
        record(waiting, _say)
    out().print(server.url, markup=False, highlight=False)


@server_app.command("status")
@friendly_errors
def status() -> None:
    """Show the local Prefect server's state, one fact a line; exit 0 if running, 3 if not."""
    from klingflow.prefect_server import server_status

    shown = server_status()
    lines = [f"state: {shown.state}"]
    if shown.server is not None:
        server = shown.server
        version = f"prefect: {server.version}"
        if server.version != shown.installed_version:
            version += f" (installed: {shown.installed_version}; the next run restarts it)"
        lines += [
            f"ui: {server.url}",
            f"api: {server.api_url}",
            f"pid: {server.pid} (server {server.server_pid})",
            f"port: {server.port}",
            version,
            f"started: {server.started_at}",
        ]
        if shown.idle_for is not None:
            stops = (
                f"stops after {shown.idle_minutes:g} min idle" if shown.idle_minutes else "no idle shutdown"
            )
            busy = f", {shown.clients} process(es) using it" if shown.clients else ""
            lines.append(f"idle for: {_duration(shown.idle_for)} ({stops}{busy})")
    lines.append(f"log: {shown.log}")
    console = out()
    for line in lines:
        console.print(line, markup=False, highlight=False)
    if not shown.running:
        raise typer.Exit(NOT_RUNNING_EXIT)


@server_app.command("stop")
@friendly_errors
def stop() -> None:
    """Stop the local Prefect server (its history is kept for the next start).

    A recorder still recording a fully cached run is given a few seconds to finish first, then
    ended; no recorder starts the server again (their runs wait for the next start).
    """
    from klingflow.prefect_server import stop_server

    stopped = stop_server(finish_first=_recorders, echo=_say)
    if stopped is None:
        _say("no local Prefect server is running")
    else:
        _say(f"stopped the local Prefect server (pid {stopped.pid}, {stopped.url})")


def _recorders() -> list[int]:
    """The pids of this home's recorders at work (asked only when a server runs: the engine's import
    takes about a second)."""
    from klingflow.engine.waiting import recorder_pids

    return recorder_pids()
