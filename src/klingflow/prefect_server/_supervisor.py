"""The supervisor side of the local Prefect server: its files, its processes, and the loop that runs it.

This file is also a script: ``python -I _supervisor.py supervise --dir D --port P ...`` detaches
(double fork, own session and process group, stdin from /dev/null, output to ``server.log``),
writes ``server.json`` and runs Prefect's server as its child (``prefect server start``, through
``klingflow/flows/sqlite_server.py``, which begins its SQLite transactions IMMEDIATE), in its
process group and (on Linux) with ``PR_SET_PDEATHSIG``, so killing the supervisor, even with
``kill -9``, takes the server with it. It stops the server when nobody used it for ``--idle-minutes``.

It uses the standard library only (``-I`` keeps even klingflow off its ``sys.path``): the
supervisor never imports Prefect, and the client side (:mod:`._manager`) shares these helpers.

Layout under ``<KLINGFLOW_HOME>/prefect-server/``:

- ``server.json``   pid/port/version of the running server (written only by its supervisor)
- ``lock``          fcntl lock taken around check-and-start, stop and idle shutdown
- ``server.log``    the supervisor's and the server's output (rotated once at 5 MB on start)
- ``last-used``     touched by every ensure and at the end of every client process
- ``clients/<pid>`` one lease per live process that uses the server (content: its start time)
- ``home/``         the server's own ``PREFECT_HOME`` (its SQLite database, never the user's)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVER_SCRIPT = Path(__file__).resolve().parents[1] / "flows" / "sqlite_server.py"
"""Prefect's server with IMMEDIATE SQLite transactions: the Prefect layer's, run by path (``-P``: its
folder stays off ``sys.path``), so the supervisor still imports no Prefect."""

__all__ = [
    "HOST",
    "SCRIPT",
    "SUPERVISE",
    "Paths",
    "alive",
    "is_supervisor",
    "live_clients",
    "locked",
    "mtime",
    "proc_start",
    "read_state",
    "remove_state_if",
]

HOST = "127.0.0.1"
SUPERVISE = "supervise"
SCRIPT = Path(__file__).resolve()
"""This file, which the client side runs as the supervisor."""


@dataclass(frozen=True)
class Paths:
    """The files of one home's local server."""

    root: Path

    @property
    def state(self) -> Path:
        return self.root / "server.json"

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    @property
    def last_used(self) -> Path:
        return self.root / "last-used"

    @property
    def clients(self) -> Path:
        return self.root / "clients"

    @property
    def prefect_home(self) -> Path:
        return self.root / "home"


@contextlib.contextmanager
def locked(paths: Paths, *, blocking: bool = True) -> Iterator[bool]:
    """Hold ``<root>/lock`` exclusively; with ``blocking=False`` yield False if someone else holds it."""
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def read_state(paths: Paths) -> dict[str, Any] | None:
    """``server.json``, or None if absent or unreadable."""
    try:
        state = json.loads(paths.state.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not isinstance(state.get("pid"), int) or not state.get("port"):
        return None
    return state


def _write_state(paths: Paths, state: dict[str, Any]) -> None:
    tmp = paths.state.with_name(f".server.json.{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, paths.state)


def remove_state_if(paths: Paths, pid: int) -> None:
    """Remove ``server.json`` if it names supervisor ``pid`` (or is unreadable)."""
    state = read_state(paths)
    if state is None or state.get("pid") == pid:
        paths.state.unlink(missing_ok=True)


def mtime(path: Path) -> float:
    """A file's modification time, 0 if it does not exist."""
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def proc_start(pid: int) -> str | None:
    """An opaque start time of a live process (None if gone or a zombie), to tell a reused pid apart."""
    if pid <= 0:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        stat = ""
    if stat:
        fields = stat.rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else fields[19]
    try:  # not Linux
        out = subprocess.run(["ps", "-o", "stat=,lstart=", "-p", str(pid)], capture_output=True, text=True)
    except OSError:
        return None
    line = out.stdout.strip()
    if not line or line.startswith("Z"):
        return None
    return line.split(None, 1)[1] if " " in line else line


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return ""
    except OSError:
        out = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True)
        return out.stdout


def alive(pid: Any, start: Any) -> bool:
    """True if ``pid`` runs and is the same process that had start time ``start``."""
    return isinstance(pid, int) and start is not None and proc_start(pid) == start


def is_supervisor(state: dict[str, Any]) -> bool:
    """The state's supervisor is alive, is the same process, and is a klingflow supervisor."""
    pid = state.get("pid")
    if not alive(pid, state.get("pid_start")):
        return False
    cmd = _cmdline(pid)  # type: ignore[arg-type]
    return SCRIPT.name in cmd and f" {SUPERVISE} " in cmd


def live_clients(paths: Paths, *, prune: bool = True) -> list[int]:
    """The pids of live processes holding a lease on the server (dead ones' leases are removed)."""
    live: list[int] = []
    try:
        leases = list(paths.clients.iterdir())
    except OSError:
        return live
    for lease in leases:
        try:
            pid, start = int(lease.name), lease.read_text().strip()
        except (ValueError, OSError):
            continue
        if alive(pid, start or None):
            live.append(pid)
        elif prune:
            lease.unlink(missing_ok=True)
    return live


# --------------------------------------------------------------------------- the supervisor process


class _Stop(Exception):
    pass


def _log(message: str) -> None:
    stamp = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"{stamp} klingflow supervisor[{os.getpid()}]: {message}", flush=True)


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A preexec_fn: the server gets SIGTERM when the supervisor dies, even by SIGKILL (Linux)."""
    prctl = None
    if sys.platform.startswith("linux"):
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        if prctl is not None:
            prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the supervisor died before prctl took effect
            os._exit(1)

    return preexec


def supervise(argv: list[str]) -> int:
    """The supervisor's main: detach, start the server, stop it when idle or asked to."""
    parser = argparse.ArgumentParser(prog=f"_supervisor.py {SUPERVISE}")
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--idle-minutes", required=True, type=float)
    parser.add_argument("--version", required=True)
    parser.add_argument("--launch", required=True)
    args = parser.parse_args(argv)

    if os.fork() > 0:  # the launcher exits at once, so the supervisor is nobody's child
        os._exit(0)
    os.setpgid(0, 0)  # its own process group: killpg(pid) reaches it and the server
    paths = Paths(args.dir)

    def on_signal(signum: int, _frame: Any) -> None:
        raise _Stop(signal.Signals(signum).name)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)

    me = os.getpid()
    try:
        child = subprocess.Popen(
            [sys.executable, "-P", str(SERVER_SCRIPT), "--host", HOST, "--port", str(args.port),
             "--analytics-off"],
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent(me),
            close_fds=True,
        )  # fmt: skip
    except _Stop:
        return 0
    started = time.time()
    _write_state(
        paths,
        {
            "pid": me,
            "pid_start": proc_start(me),
            "server_pid": child.pid,
            "server_pid_start": proc_start(child.pid),
            "port": args.port,
            "version": args.version,
            "started_at": _dt.datetime.fromtimestamp(started).astimezone().isoformat(timespec="seconds"),
            "started_ts": started,
            "idle_minutes": args.idle_minutes,
            "python": sys.executable,
            "prefect_home": str(paths.prefect_home),
            "launch": args.launch,
        },
    )
    _log(f"prefect {args.version} server pid {child.pid} on http://{HOST}:{args.port}, idle shutdown "
         + (f"after {args.idle_minutes:g} min" if args.idle_minutes > 0 else "off"))  # fmt: skip
    try:
        return _watch(paths, child, args.idle_minutes, started)
    except _Stop as stop:
        _log(f"{stop}: stopping")
        _stop_child(child)
        remove_state_if(paths, me)
        return 0


def _watch(paths: Paths, child: subprocess.Popen[bytes], idle_minutes: float, started: float) -> int:
    """Wait for the server to exit, or stop it once nobody used it for ``idle_minutes``."""
    me = os.getpid()
    idle = idle_minutes * 60
    interval = min(max(idle / 6, 0.5), 30.0) if idle > 0 else 30.0
    last_active = started
    while True:
        try:
            code = child.wait(timeout=interval)
        except subprocess.TimeoutExpired:
            pass
        else:
            _log(f"the server exited with code {code}")
            with locked(paths):
                remove_state_if(paths, me)
            return 0
        if idle <= 0:
            continue
        if live_clients(paths):
            last_active = time.time()
            continue
        if time.time() - max(last_active, mtime(paths.last_used)) < idle:
            continue
        with locked(paths, blocking=False) as got:
            # under the lock no ensure_server is between its check and its touch of last-used
            if not got or live_clients(paths) or time.time() - mtime(paths.last_used) < idle:
                continue
            _log(f"idle for {idle_minutes:g} min: stopping")
            _stop_child(child)
            remove_state_if(paths, me)
            return 0


def _stop_child(child: subprocess.Popen[bytes]) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)  # a second stop request must not cut the shutdown short
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    _kill_group_members()


def _kill_group_members() -> None:
    """SIGKILL anything the server left in the supervisor's process group (Linux; best effort)."""
    me = os.getpid()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            if os.getpgid(int(entry)) == me:
                os.kill(int(entry), signal.SIGKILL)
        except OSError as exc:
            if exc.errno not in (errno.ESRCH, errno.EPERM):
                raise


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == SUPERVISE:
        sys.exit(supervise(sys.argv[2:]))
    sys.exit(f"usage: _supervisor.py {SUPERVISE} --dir D --port P --idle-minutes M --version V --launch X")
