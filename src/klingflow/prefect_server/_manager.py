"""The client side of the local Prefect server: find it, start it, stop it, describe it.

Nothing here imports Prefect: the server is ``prefect server start`` (through the Prefect layer's
``flows/sqlite_server.py``, run by path) run by a supervisor (:mod:`._supervisor`), and it is judged
by its ``/api/health`` answer. Which Prefect API a user configured (a profile, ``prefect.toml``)
only Prefect can tell, so the caller passes it in (``use_local_server(configured, ...)``); the
Prefect layer (:mod:`klingflow.flows.server`) does, and refreshes Prefect's settings afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from klingflow.errors import ConfigError
from klingflow.prefect_server._supervisor import (
    HOST,
    SCRIPT,
    SUPERVISE,
    Paths,
    alive,
    is_supervisor,
    live_clients,
    locked,
    mtime,
    proc_start,
    read_state,
    remove_state_if,
)
from klingflow.settings import klingflow_home, settings

__all__ = [
    "LocalServer",
    "ServerStatus",
    "ensure_server",
    "find_server",
    "installed_prefect_version",
    "server_paths",
    "server_status",
    "stop_server",
]

OWN_URL = "KLINGFLOW_LOCAL_PREFECT_API_URL"  # settings().local_prefect_api_url
_LOG_ROTATE_BYTES = 5 * 1024 * 1024
_STOP_TIMEOUT = 20.0
_UNRESPONSIVE_AFTER = 15.0  # an existing server that does not answer /api/health this long is replaced
_FINISH_FIRST_GRACE = 10.0
"""Seconds ``stop_server`` gives a run's recorder to finish (recording one takes a few) before ending it."""

Echo = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def server_paths(home: str | Path | None = None) -> Paths:
    """The files of ``home``'s local server (default: ``KLINGFLOW_HOME``), created if needed."""
    base = Path(home).expanduser() if home is not None else klingflow_home()
    root = base.resolve() / "prefect-server"
    root.mkdir(parents=True, exist_ok=True)
    return Paths(root)


@cache
def installed_prefect_version() -> str:
    """The installed Prefect's version (from its metadata: Prefect is not imported)."""
    from importlib.metadata import version

    return version("prefect")


@dataclass(frozen=True)
class LocalServer:
    """A running klingflow-managed Prefect server."""

    url: str  # the UI
    api_url: str
    pid: int  # the supervisor; the server is its child, in its process group
    server_pid: int
    port: int
    version: str
    started_at: str
    started: bool  # True if this call started it

    @classmethod
    def from_state(cls, state: dict[str, Any], *, started: bool) -> LocalServer:
        url = f"http://{HOST}:{state['port']}"
        return cls(
            url=url,
            api_url=f"{url}/api",
            pid=state["pid"],
            server_pid=state.get("server_pid") or 0,
            port=state["port"],
            version=state.get("version", ""),
            started_at=state.get("started_at", ""),
            started=started,
        )


@dataclass(frozen=True)
class ServerStatus:
    """What ``klingflow server status`` reports."""

    state: str  # "running" | "not running" | "stale" | "unresponsive"
    server: LocalServer | None = None
    installed_version: str | None = None
    idle_for: float | None = None  # seconds since last use; 0 while a client process is alive
    idle_minutes: float | None = None  # the idle shutdown it was started with (0 = never)
    clients: int = 0
    log: Path | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"


# --------------------------------------------------------------------------- processes, HTTP, ports


def _wait_gone(processes: list[tuple[int, Any]], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not (done := all(not alive(pid, start) for pid, start in processes)):
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    return done


def _stop_processes(state: dict[str, Any], timeout: float = _STOP_TIMEOUT) -> None:
    """Stop a server: SIGTERM its supervisor (which stops the server), SIGKILL its group if need be."""
    pid, pid_start = state["pid"], state.get("pid_start")
    server = (state.get("server_pid") or 0, state.get("server_pid_start"))
    ours = is_supervisor(state)
    if ours:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if _wait_gone([(pid, pid_start), server], timeout if ours else 0):
        return
    if ours:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    if alive(*server):  # only if it is still the server this state names
        with contextlib.suppress(ProcessLookupError):
            os.kill(server[0], signal.SIGKILL)
    _wait_gone([(pid, pid_start), server], 5)


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with _OPENER.open(f"{url}/api/health", timeout=timeout) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _choose_port(excluded: set[int]) -> int:
    preferred = settings().server_port
    if preferred not in excluded and _port_free(preferred):
        return preferred
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in excluded:
            return port


def _server_env(paths: Paths, port: int) -> dict[str, str]:
    """The server's environment: the caller's minus every PREFECT_* setting, plus its own home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != OWN_URL}
    env.update(
        PREFECT_HOME=str(paths.prefect_home),
        PREFECT_SERVER_API_HOST=HOST,
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_SERVER_UI_API_URL=f"http://{HOST}:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_LOGGING_LEVEL="WARNING",  # no access log line per request in server.log
        PYTHONUNBUFFERED="1",
    )
    return env


# --------------------------------------------------------------------------- ensure, stop, status


def ensure_server(
    home: str | Path | None = None, *, echo: Echo | None = _stderr, timeout: float | None = None
) -> LocalServer:
    """Return ``home``'s running local Prefect server, starting it in the background if needed.

    Concurrent callers (threads or processes) serialise on a file lock: one starts the server,
    the others reuse it. A stale ``server.json``, a dead or unresponsive server, or one of another
    Prefect version is replaced. Raises ConfigError if the server does not start.
    """
    echo = echo or (lambda _line: None)
    paths = server_paths(home)
    installed = installed_prefect_version()
    timeout = settings().server_start_timeout if timeout is None else timeout
    with locked(paths):
        state = read_state(paths)
        if state is not None:
            problem = _unusable(state, installed)
            if problem is None:
                paths.last_used.touch()
                return LocalServer.from_state(state, started=False)
            if problem:
                echo(problem)
            # a stale state's server (only possible without PR_SET_PDEATHSIG) is stopped if still alive
            _stop_processes(state)
            paths.state.unlink(missing_ok=True)
        state = _start(paths, installed, timeout)
        paths.last_used.touch()
        return LocalServer.from_state(state, started=True)


def find_server(home: str | Path | None = None) -> LocalServer | None:
    """``home``'s local server if it runs and answers, else None: nothing is started or replaced.

    For a process that only reports what was already done (a recorder): a server the user stopped
    must stay stopped. Like :func:`ensure_server` it counts as a use (``last-used``), and it takes
    the same lock, so it never finds a server that ``stop_server`` is stopping.
    """
    paths = server_paths(home)
    with locked(paths):
        state = read_state(paths)
        if state is None or _unusable(state, installed_prefect_version()) is not None:
            return None
        paths.last_used.touch()
        return LocalServer.from_state(state, started=False)


def _unusable(state: dict[str, Any], installed: str) -> str | None:
    """None if the server ``state`` names can be used; else why not ('' for a stale state)."""
    if not is_supervisor(state):
        return ""  # its supervisor is gone, or the pid now belongs to another program
    if state.get("version") != installed:
        return (
            f"klingflow: the local Prefect server runs prefect {state.get('version')}, "
            f"{installed} is installed: restarting it"
        )
    if not _answers(state):
        return f"klingflow: the local Prefect server (pid {state['pid']}) is not answering: restarting"
    return None


def _answers(state: dict[str, Any]) -> bool:
    """Health check of a server that is already up, patient enough for a busy one."""
    url = f"http://{HOST}:{state['port']}"
    deadline = time.monotonic() + _UNRESPONSIVE_AFTER
    while True:
        if _healthy(url, timeout=5.0):
            return True
        server_alive = alive(state.get("server_pid") or 0, state.get("server_pid_start"))
        if time.monotonic() >= deadline or not server_alive or not is_supervisor(state):
            return False
        time.sleep(0.5)


def _start(paths: Paths, version: str, timeout: float) -> dict[str, Any]:
    """Launch a supervisor and wait for its server to answer; retry on another port if one is taken."""
    excluded: set[int] = set()
    problem = ""
    for _attempt in range(3):
        port = _choose_port(excluded)
        launch = uuid.uuid4().hex
        if mtime(paths.log) and paths.log.stat().st_size > _LOG_ROTATE_BYTES:
            os.replace(paths.log, paths.log.with_name("server.log.1"))
        offset = paths.log.stat().st_size if paths.log.exists() else 0
        command = [
            sys.executable,
            "-I",  # the supervisor is stdlib only; -I keeps the script's directory off sys.path
            str(SCRIPT),
            SUPERVISE,
            "--dir", str(paths.root),
            "--port", str(port),
            "--idle-minutes", repr(settings().server_idle_minutes),
            "--version", version,
            "--launch", launch,
        ]  # fmt: skip
        with open(paths.log, "ab") as log:
            launcher = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=paths.root,  # no prefect.toml / .env of the caller's directory
                env=_server_env(paths, port),
                start_new_session=True,
                close_fds=True,
            )
        launcher.wait(timeout=30)  # it forks the supervisor and exits at once
        state = _wait_healthy(paths, launch, timeout)
        if state is not None:
            return state
        tail = _log_tail(paths, offset)
        if "already in use" in tail or "address in use" in tail.lower():
            excluded.add(port)
            problem = f"port {port} was taken"
            continue
        problem = tail or "no output"
        break
    raise ConfigError(
        "the local Prefect server did not start",
        context=str(paths.log),
        hint=f"{problem.strip()[-600:]}\n  set KLINGFLOW_PREFECT=ephemeral to run without it",
    )


def _wait_healthy(paths: Paths, launch: str, timeout: float) -> dict[str, Any] | None:
    began = time.monotonic()
    state: dict[str, Any] | None = None
    while time.monotonic() < began + timeout:
        if state is None and time.monotonic() - began > 15:
            return None  # the supervisor writes its state right after forking: it failed early
        current = read_state(paths)
        if current is not None and current.get("launch") == launch:
            state = current
            if _healthy(f"http://{HOST}:{state['port']}", timeout=2):
                return state
            if not alive(state.get("server_pid") or 0, state.get("server_pid_start")):
                break  # the server exited (its supervisor may be waiting for our lock to clean up)
        elif state is not None:
            return None  # it wrote its state, then removed it on exit
        time.sleep(0.1)
    if state is not None:  # failed or too slow: stop what is left
        _stop_processes(state)
        remove_state_if(paths, state["pid"])
    return None


def _log_tail(paths: Paths, offset: int) -> str:
    try:
        with open(paths.log, "rb") as log:
            log.seek(offset)
            return log.read()[-4000:].decode(errors="replace")
    except OSError:
        return ""


def stop_server(
    home: str | Path | None = None,
    *,
    timeout: float = _STOP_TIMEOUT,
    finish_first: Callable[[], Iterable[int]] | None = None,
    grace: float = _FINISH_FIRST_GRACE,
    echo: Echo | None = None,
) -> LocalServer | None:
    """Stop ``home``'s local server; return what was stopped (None if none was running).

    ``finish_first`` names processes that use the server briefly and should be done before it
    stops: the recorders of runs made without Prefect. Those of them holding a lease on the server
    are given ``grace`` seconds to finish and then ended (SIGTERM, then SIGKILL). They are looked
    for under the lock, so a process not found then cannot be using the server: it finds no
    server afterwards (:func:`find_server` takes the same lock).
    """
    paths = server_paths(home)
    with locked(paths):
        state = read_state(paths)
        if state is None:
            return None
        stopped = LocalServer.from_state(state, started=False) if is_supervisor(state) else None
        if stopped is not None:
            if finish_first is not None:
                _let_finish(paths, finish_first(), grace, echo or (lambda _line: None))
            _stop_processes(state, timeout)
        paths.state.unlink(missing_ok=True)
        return stopped


def _let_finish(paths: Paths, pids: Iterable[int], grace: float, echo: Echo) -> None:
    """Wait up to ``grace`` s for those of ``pids`` that use the server (a lease) to exit; end the rest."""
    using = set(live_clients(paths, prune=False))
    waiting = [(pid, proc_start(pid)) for pid in sorted(set(pids) & using)]
    if not waiting:
        return
    names = ", ".join(str(pid) for pid, _start in waiting)
    echo(f"klingflow: waiting up to {grace:g} s for the run recorder(s) using the server (pid {names})")
    if _wait_gone(waiting, grace):
        return
    left = [(pid, start) for pid, start in waiting if alive(pid, start)]
    echo(
        f"klingflow: ending the recorder(s) still running (pid {', '.join(str(p) for p, _s in left)}); "
        "their runs wait to be recorded by the next start"
    )
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid, start in left:
            if alive(pid, start):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
        if _wait_gone(left, 5):
            return


def server_status(home: str | Path | None = None) -> ServerStatus:
    """Describe ``home``'s local server without starting or changing anything."""
    paths = server_paths(home)
    installed = installed_prefect_version()
    state = read_state(paths)
    if state is None:
        return ServerStatus("not running", installed_version=installed, log=paths.log)
    server = LocalServer.from_state(state, started=False)
    clients = len(live_clients(paths, prune=False))
    last = max(mtime(paths.last_used), float(state.get("started_ts") or 0))
    if not is_supervisor(state):
        label = "stale"
    else:
        label = "running" if _healthy(server.url) else "unresponsive"
    return ServerStatus(
        label,
        server=server,
        installed_version=installed,
        idle_for=0.0 if clients else max(time.time() - last, 0.0),
        idle_minutes=state.get("idle_minutes"),
        clients=clients,
        log=paths.log,
    )
